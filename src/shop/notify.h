/*
 * notify.h — pgtx-shop's readiness protocol with the service manager
 * (systemd's Type=notify, through libsystemd's sd_notify).  Both calls do
 * nothing when NOTIFY_SOCKET is unset, so a run from a shell is unchanged.
 * Called by main.c; messages from other processes (the embedded cluster's
 * postmaster inherits NOTIFY_SOCKET and says READY=1 itself) are dropped by
 * systemd under the default NotifyAccess=main.
 */
#ifndef PGTX_SHOP_NOTIFY_H
#define PGTX_SHOP_NOTIFY_H

/* The server listens and its "listening on" line is out: READY=1. */
void shop_notify_ready(void);

/* A stop was asked for; requests in flight drain next: STOPPING=1. */
void shop_notify_stopping(void);

#endif
