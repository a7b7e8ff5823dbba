/* notify.c — READY=1 and STOPPING=1 for systemd.  The manager holds the
   unit in "activating" until READY=1, so units ordered after pgtx-shop.service
   start only once it serves (migrations applied, port bound). */
#include "notify.h"

#include <string.h>
#include <systemd/sd-daemon.h>

#include "server.h"

/* A manager that cannot be told is not a reason to stop serving: one
   warning, and the service goes on. */
static void notify(const char *state)
{
    int r = sd_notify(0, state);
    if (r < 0)
        shop_log(SHOP_LOG_WARN, "cannot send %.*s to the service manager: %s",
                 (int)strcspn(state, "\n"), state, strerror(-r));
}

void shop_notify_ready(void)
{
    notify("READY=1\nSTATUS=serving");
}

void shop_notify_stopping(void)
{
    notify("STOPPING=1\nSTATUS=draining requests and stopping");
}
