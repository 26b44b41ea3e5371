/* SPDX-License-Identifier: Apache-2.0 */
/* `loom serve [SERVICE...]`: run services in this process (see loom_serve_main). */
#include "cmd.h"

int cmd_serve(int argc, char **argv)
{
    return loom_serve_main(loom_services, loom_nservices, argc, argv);
}
