/* svg.c — hand-written SVG line charts: axes, ticks, lines, markers and a legend. */
#include "svg.h"

#include <math.h>
#include <string.h>

#define CHART_W 460
#define CHART_H 330
#define MARGIN_L 72
#define MARGIN_R 18
#define MARGIN_T 34
#define MARGIN_B 52
#define TITLE_H 36
#define LEGEND_ROW_H 20
#define LEGEND_PER_ROW 3
#define Y_TICKS 5

/* Where a chart sits and how its data maps onto it. */
typedef struct frame {
    double left, top, width, height; /* the plotting area */
    double x0, x1, y1;              /* data range; y starts at 0 */
    bool log_x;
} frame;

static void put_escaped(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f); break;
        }
    }
}

static void text(FILE *f, double x, double y, const char *anchor, const char *extra,
                 const char *s)
{
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" %s>", x, y, anchor,
            extra);
    put_escaped(f, s);
    fputs("</text>\n", f);
}

/* A round number at least v whose fifths are round too: axis ends. */
static double nice_ceil(double v)
{
    if (!(v > 0))
        return 1;
    double p = pow(10, floor(log10(v)));
    static const double steps[] = {1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        if (steps[i] * p >= v * (1 - 1e-9))
            return steps[i] * p;
    return 10 * p;
}

/* 12000 -> "12k": tick labels stay short. */
static void short_number(char *buf, size_t len, double v)
{
    if (fabs(v) >= 1e6)
        snprintf(buf, len, "%gM", v / 1e6);
    else if (fabs(v) >= 1e4)
        snprintf(buf, len, "%gk", v / 1e3);
    else
        snprintf(buf, len, "%g", v);
}

static double fx(const frame *fr, double x)
{
    double a = fr->log_x ? log2(fr->x0) : fr->x0, b = fr->log_x ? log2(fr->x1) : fr->x1;
    double v = fr->log_x ? log2(x) : x;
    return fr->left + (b > a ? (v - a) / (b - a) : 0.5) * fr->width;
}

static double fy(const frame *fr, double y)
{
    return fr->top + fr->height - (fr->y1 > 0 ? y / fr->y1 : 0) * fr->height;
}

/* The data range over every series; a single x is centred. */
static void fit(frame *fr, const svg_chart *c)
{
    double x0 = INFINITY, x1 = -INFINITY, y1 = 0;
    for (int s = 0; s < c->nseries; s++)
        for (int i = 0; i < c->series[s].n; i++) {
            x0 = fmin(x0, c->series[s].x[i]);
            x1 = fmax(x1, c->series[s].x[i]);
            y1 = fmax(y1, c->series[s].y[i]);
        }
    if (x0 > x1)
        x0 = x1 = 1;
    fr->log_x = c->log_x && x0 > 0;
    fr->x0 = x0;
    fr->x1 = x1;
    fr->y1 = nice_ceil(y1 * 1.05);
}

static void draw_y_axis(FILE *f, const frame *fr, const char *label)
{
    for (int i = 0; i <= Y_TICKS; i++) {
        double v = fr->y1 * i / Y_TICKS, y = fy(fr, v);
        char buf[32];
        short_number(buf, sizeof buf, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                   "stroke=\"#e0e0e0\"/>\n", fr->left, y, fr->left + fr->width, y);
        text(f, fr->left - 6, y + 4, "end", "font-size=\"11\"", buf);
    }
    double cx = fr->left - 52, cy = fr->top + fr->height / 2;
    char rot[64];
    snprintf(rot, sizeof rot, "font-size=\"12\" transform=\"rotate(-90 %.1f %.1f)\"",
             cx, cy);
    text(f, cx, cy, "middle", rot, label);
}

/* Did a series before `s` already have this x (and so its tick)? */
static bool tick_drawn(const svg_chart *c, int s, double x)
{
    for (int k = 0; k < s; k++)
        for (int i = 0; i < c->series[k].n; i++)
            if (c->series[k].x[i] == x)
                return true;
    return false;
}

/* A tick at every x that some series has: the client counts that ran. */
static void draw_x_axis(FILE *f, const frame *fr, const svg_chart *c)
{
    double bottom = fr->top + fr->height;
    for (int s = 0; s < c->nseries; s++)
        for (int i = 0; i < c->series[s].n; i++) {
            if (tick_drawn(c, s, c->series[s].x[i]))
                continue;
            double x = fx(fr, c->series[s].x[i]);
            char buf[32];
            snprintf(buf, sizeof buf, "%g", c->series[s].x[i]);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                       "stroke=\"#444\"/>\n", x, bottom, x, bottom + 4);
            text(f, x, bottom + 16, "middle", "font-size=\"11\"", buf);
        }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
               "fill=\"none\" stroke=\"#444\"/>\n", fr->left, fr->top, fr->width,
            fr->height);
    text(f, fr->left + fr->width / 2, bottom + 36, "middle", "font-size=\"12\"",
         c->x_label);
}

static void draw_marker(FILE *f, const svg_series *s, double x, double y, bool bad)
{
    if (!bad) {
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", x, y,
                s->color);
        return;
    }
    fprintf(f, "<path d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" stroke=\"%s\" "
               "stroke-width=\"2.5\"/>\n", x - 5, y - 5, x + 5, y + 5, x - 5, y + 5,
            x + 5, y - 5, s->color);
}

static void draw_series(FILE *f, const frame *fr, const svg_series *s)
{
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"",
            s->color, s->dashed ? " stroke-dasharray=\"6 4\"" : "");
    for (int i = 0; i < s->n; i++)
        fprintf(f, "%s%.1f,%.1f", i ? " " : "", fx(fr, s->x[i]), fy(fr, s->y[i]));
    fputs("\"/>\n", f);
    for (int i = 0; i < s->n; i++)
        draw_marker(f, s, fx(fr, s->x[i]), fy(fr, s->y[i]),
                    s->invalid != NULL && s->invalid[i]);
}

static void draw_chart(FILE *f, const svg_chart *c, double left)
{
    frame fr = {.left = left + MARGIN_L, .top = TITLE_H + MARGIN_T,
                .width = CHART_W - MARGIN_L - MARGIN_R,
                .height = CHART_H - MARGIN_T - MARGIN_B};
    fit(&fr, c);
    text(f, fr.left + fr.width / 2, TITLE_H + 20, "middle",
         "font-size=\"14\" font-weight=\"bold\"", c->title);
    draw_y_axis(f, &fr, c->y_label);
    draw_x_axis(f, &fr, c);
    for (int s = 0; s < c->nseries; s++)
        draw_series(f, &fr, &c->series[s]);
}

static int legend_rows(const svg_chart *first)
{
    return (first->nseries + LEGEND_PER_ROW - 1) / LEGEND_PER_ROW;
}

static void draw_legend(FILE *f, const svg_chart *first, double top, double width)
{
    double col_w = width / LEGEND_PER_ROW;
    for (int s = 0; s < first->nseries; s++) {
        const svg_series *se = &first->series[s];
        double x = 30 + col_w * (s % LEGEND_PER_ROW);
        double y = top + LEGEND_ROW_H * (s / LEGEND_PER_ROW);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                   "stroke-width=\"2\"%s/>\n", x, y, x + 28, y, se->color,
                se->dashed ? " stroke-dasharray=\"6 4\"" : "");
        text(f, x + 36, y + 4, "start", "font-size=\"12\"", se->name);
    }
}

bool svg_write(FILE *f, const char *title, const svg_chart *charts, int ncharts,
               const char *note)
{
    int rows = ncharts > 0 ? legend_rows(&charts[0]) : 0;
    double width = (double)CHART_W * (ncharts > 0 ? ncharts : 1);
    double legend_top = TITLE_H + CHART_H + 14;
    double height = legend_top + LEGEND_ROW_H * rows + (note ? 24 : 4);
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
               "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            width, height, width, height);
    text(f, width / 2, 24, "middle", "font-size=\"16\" font-weight=\"bold\"", title);
    for (int i = 0; i < ncharts; i++)
        draw_chart(f, &charts[i], CHART_W * (double)i);
    if (ncharts > 0)
        draw_legend(f, &charts[0], legend_top, width - 30);
    if (note)
        text(f, 30, legend_top + LEGEND_ROW_H * rows + 8, "start",
             "font-size=\"11\" fill=\"#555\"", note);
    fputs("</svg>\n", f);
    return !ferror(f);
}
