/* svg.h — small line charts written as SVG text, for `pgtx-race bench --plot`. */
#ifndef PGTX_RACE_SVG_H
#define PGTX_RACE_SVG_H

#include <stdbool.h>
#include <stdio.h>

/* One line of a chart.  Everything is borrowed for the duration of the
   call.  Points must be in increasing x. */
typedef struct svg_series {
    const char *name;
    const char *color;    /* any SVG color, e.g. "#1f77b4" */
    bool dashed;
    int n;
    const double *x, *y;
    const bool *invalid; /* NULL, or per point: drawn as a cross, not a dot */
} svg_series;

typedef struct svg_chart {
    const char *title;
    const char *x_label, *y_label;
    bool log_x; /* log2 x axis (client counts double) */
    const svg_series *series;
    int nseries;
} svg_chart;

/*
 * Write `ncharts` charts side by side under `title`, with one legend for the
 * series of the first chart (later charts reuse its names and colors) and an
 * optional `note` line under it.  Returns false if writing failed.
 */
bool svg_write(FILE *f, const char *title, const svg_chart *charts, int ncharts,
               const char *note);

#endif
