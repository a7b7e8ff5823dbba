/* one_line.h — a message made one line, for a log line or stderr: libpq's
 * connection messages span lines ("...failed: Connection refused\n\tIs the
 * server running..."), and so do pg_ctl's.  Private to this tree (the
 * library and both programs), never installed. */
#ifndef PGTX_ONE_LINE_H
#define PGTX_ONE_LINE_H

#include <stdbool.h>
#include <stddef.h>

/* In place: each run of line breaks, tabs and spaces becomes one space,
   none at either end.  Returns msg. */
static inline char *pgtx_one_line_(char *msg)
{
    size_t o = 0;
    for (const char *p = msg; *p; p++) {
        bool space = *p == '\n' || *p == '\r' || *p == '\t' || *p == ' ';
        if (space && (o == 0 || msg[o - 1] == ' '))
            continue;
        msg[o++] = space ? ' ' : *p;
    }
    while (o > 0 && msg[o - 1] == ' ')
        o--;
    msg[o] = '\0';
    return msg;
}

#endif
