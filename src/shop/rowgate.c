/* rowgate.c — holds per row, counted in a small hash table.  Rows in flight
   are few (at most per_row per worker and queued request), so a table of
   fixed size with chains stays short; an entry lives while it is held. */
#include "server.h"

#include <stdlib.h>

#define GATE_BUCKETS 256

typedef struct row_hold {
    struct row_hold *next;
    shop_row_key key;
    int held;
} row_hold;

struct row_gate {
    int per_row;
    row_hold *bucket[GATE_BUCKETS];
};

row_gate *row_gate_create(int per_row)
{
    row_gate *g = calloc(1, sizeof *g);
    if (g)
        g->per_row = per_row < 1 ? 1 : per_row;
    return g;
}

void row_gate_destroy(row_gate *g)
{
    if (g == NULL)
        return;
    for (int i = 0; i < GATE_BUCKETS; i++)
        while (g->bucket[i]) {
            row_hold *h = g->bucket[i];
            g->bucket[i] = h->next;
            free(h);
        }
    free(g);
}

static bool same_row(shop_row_key a, shop_row_key b)
{
    return a.kind == b.kind && a.id == b.id;
}

static row_hold **slot_of(row_gate *g, shop_row_key k)
{
    uint64_t x = (uint64_t)k.id * 0x9e3779b97f4a7c15u + (uint64_t)k.kind;
    row_hold **p = &g->bucket[(x >> 32) % GATE_BUCKETS];
    while (*p && !same_row((*p)->key, k))
        p = &(*p)->next;
    return p; /* the entry, or the NULL link where it would go */
}

static int held(row_gate *g, shop_row_key k)
{
    row_hold *h = *slot_of(g, k);
    return h ? h->held : 0;
}

/* The same row twice in one request (an order of one's own coupon, say)
   is one hold. */
static bool seen_before(const shop_row_key *rows, int i)
{
    for (int j = 0; j < i; j++)
        if (same_row(rows[j], rows[i]))
            return true;
    return false;
}

row_gate_result row_gate_enter(row_gate *g, const shop_row_key *rows, int n)
{
    for (int i = 0; i < n; i++)
        if (held(g, rows[i]) >= ((rows[i].kind & SHOP_ROW_LANE) ? 1 : g->per_row))
            return ROW_GATE_FULL;
    for (int i = 0; i < n; i++) {
        if (seen_before(rows, i))
            continue;
        row_hold **p = slot_of(g, rows[i]);
        if (*p == NULL) {
            *p = calloc(1, sizeof **p);
            if (*p == NULL) {
                row_gate_leave(g, rows, i);
                return ROW_GATE_NOMEM;
            }
            (*p)->key = rows[i];
        }
        (*p)->held++;
    }
    return ROW_GATE_ENTERED;
}

void row_gate_leave(row_gate *g, const shop_row_key *rows, int n)
{
    for (int i = 0; i < n; i++) {
        if (seen_before(rows, i))
            continue;
        row_hold **p = slot_of(g, rows[i]);
        row_hold *h = *p;
        if (h == NULL)
            continue;
        if (--h->held == 0) {
            *p = h->next;
            free(h);
        }
    }
}

bool row_keys_overlap(const shop_row_key *a, int na, const shop_row_key *b, int nb)
{
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            if (same_row(a[i], b[j]))
                return true;
    return false;
}
