/* strategy.c — names of the safe-update strategies. */
#include "race.h"

#include <string.h>

static const char *const NAMES[RACE_STRATEGY_COUNT] = {
    "naive", "atomic", "lock", "optimistic", "serializable"};

const char *race_strategy_name(race_strategy s)
{
    return (unsigned)s < RACE_STRATEGY_COUNT ? NAMES[s] : "unknown";
}

bool race_strategy_parse(const char *name, race_strategy *out)
{
    for (int i = 0; i < RACE_STRATEGY_COUNT; i++)
        if (name && strcmp(name, NAMES[i]) == 0) {
            *out = (race_strategy)i;
            return true;
        }
    return false;
}
