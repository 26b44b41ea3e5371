/* SPDX-License-Identifier: Apache-2.0 */
/*
 * JSON: a fast tokenizer for hot paths and a writer. (Being completed; the escaper below is the
 * stable part other modules use.)
 */
#ifndef LOOM_JSON_H
#define LOOM_JSON_H

#include <loom/str.h>

/*
 * Append `s` (n bytes) to `out` as a quoted JSON string: ", \ and control characters escaped,
 * valid UTF-8 copied as is, each invalid UTF-8 byte replaced by \ufffd. Returns LOOM_ETOOBIG if
 * the buffer's ceiling is hit (the buffer may then hold a partial string).
 */
loom_err loom_json_escape(struct loom_buf *out, const char *s, size_t n);

#endif
