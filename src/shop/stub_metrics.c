/* stub_metrics.c — stands in for metrics.c until it exists: transactions are counted nowhere. */
#include "shop.h"

void shop_metrics_tx(shop_metrics *m, shop_strategy s, shop_tx_outcome o,
                     int retries)
{
    (void)m;
    (void)s;
    (void)o;
    (void)retries;
}
