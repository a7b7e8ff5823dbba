/* route_products.c — POST /v1/products, GET /v1/products/{id}, POST /v1/products/{id}/restock. */
#include "app_internal.h"

static const shop_field PRODUCT_FIELDS[] = {
    {"name", SHOP_FIELD_TEXT, 0, false},
    {"price", SHOP_FIELD_INT, 0, false},
    {"stock", SHOP_FIELD_INT, 0, false},
};

void products_create(shop_ctx *ctx)
{
    shop_body b;
    if (!body_parse(ctx, PRODUCT_FIELDS, 3, &b))
        return;
    shop_num price = num_of(b.num[1]), stock = num_of(b.num[2]);
    stmt_arg a = {
        .sql = "INSERT INTO product (name, price, stock, initial_stock)"
               " VALUES ($1, $2, $3, $3) RETURNING " PRODUCT_COLUMNS,
        .n = 3,
        .params = {b.text[0], price.s, stock.s}};
    if (run_tx(ctx, engine_for(ctx), stmt_tx, &a, NULL))
        reply_row(ctx->res, 201, a.rows);
    PQclear(a.rows);
    body_free(&b);
}

void products_get(shop_ctx *ctx)
{
    fetch_by_id(ctx, "SELECT " PRODUCT_COLUMNS " FROM product WHERE id = $1",
                "product", NULL);
}

#define RESTOCK_RECORD                                                         \
    "INSERT INTO restock (product_id, quantity) SELECT id, $2::bigint FROM c"

static const shop_bump RESTOCK = {
    .counter = &COUNTER_STOCK,
    .field = "quantity",
    .atomic = BUMP_ATOMIC_SQL("product", "stock", PRODUCT_COLUMNS, RESTOCK_RECORD),
    .set = BUMP_SET_SQL("product", "stock", PRODUCT_COLUMNS, RESTOCK_RECORD),
    .overflow = "the stock plus the quantity",
};

void products_restock(shop_ctx *ctx)
{
    bump_handle(ctx, &RESTOCK);
}
