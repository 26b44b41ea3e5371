/* SPDX-License-Identifier: Apache-2.0 */
#include <loom/core.h>
#include <stdio.h>
int main(void)
{
    puts(LOOM_VERSION);
    return 0;
}
