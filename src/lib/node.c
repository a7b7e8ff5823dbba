/* node.c — which server a connection is on, whether it is a standby, and
   WAL positions (pg_lsn) as numbers. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

/* At most 8 hexadecimal digits, as pg_lsn's input takes each half. */
static const char *hex_half(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    int n = 0;
    for (; n < 8; n++, s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        v = v << 4 | (uint32_t)d;
    }
    if (n == 0)
        return NULL;
    *out = v;
    return s;
}

pgtx_status pgtx_lsn_parse(const char *text, uint64_t *out)
{
    uint32_t hi, lo;
    const char *s = text ? hex_half(text, &hi) : NULL;
    if (s == NULL || *s != '/' || (s = hex_half(s + 1, &lo)) == NULL ||
        *s != '\0' || out == NULL)
        return PGTX_INVALID;
    *out = (uint64_t)hi << 32 | lo;
    return PGTX_OK;
}

char *pgtx_lsn_format(uint64_t lsn, char buf[PGTX_LSN_SIZE])
{
    snprintf(buf, PGTX_LSN_SIZE, "%X/%X", (unsigned)(lsn >> 32),
             (unsigned)(lsn & 0xffffffffu));
    return buf;
}

void pgtx__conn_node(PGconn *pg, char *buf, size_t size)
{
    const char *host = pg ? PQhost(pg) : NULL;
    const char *port = pg ? PQport(pg) : NULL;
    if (host == NULL || *host == '\0') {
        buf[0] = '\0';
        return;
    }
    snprintf(buf, size, "%s:%s", host, port ? port : "");
}

/* The server reports in_hot_standby (PostgreSQL 14 and later) as the
   session starts and again when it is promoted: "on" is a standby. */
bool pgtx__on_standby(PGconn *pg)
{
    const char *v = PQparameterStatus(pg, "in_hot_standby");
    return v != NULL && strcmp(v, "on") == 0;
}

/* Could a 25006 on this connection come from its server being a standby?
   Yes unless the server says it is not (older servers say nothing). */
bool pgtx__maybe_standby(PGconn *pg)
{
    const char *v = PQparameterStatus(pg, "in_hot_standby");
    return v == NULL || strcmp(v, "off") != 0;
}
