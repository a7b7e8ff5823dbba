/* strategy.c — the order in which the lab presents libpgtx's strategies. */
#include "race.h"

const pgtx_strategy RACE_STRATEGY_ORDER[PGTX_STRATEGY_COUNT] = {
    PGTX_STRATEGY_NAIVE, PGTX_STRATEGY_ATOMIC, PGTX_STRATEGY_LOCK,
    PGTX_STRATEGY_OPTIMISTIC, PGTX_STRATEGY_SERIALIZABLE};
