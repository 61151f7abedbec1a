/**
 * The dashboard's single HTML page. The client script receives points from the server
 * (`/api/events`, server-sent events: a `snapshot`, then `points` as metrics.jsonl grows and
 * `reset` when a run's file was truncated or replaced) and draws them with uPlot, served from
 * node_modules (`/assets/uPlot.iife.min.js`): no build step, no CDN.
 *
 * Everything plotted is also on `window.__megalith` (per chart: the legend labels and the exact
 * arrays handed to uPlot), so tests and users can check the page against metrics.jsonl.
 *
 * The script is plain ES2020 in a string (no template literals inside), so it runs as written
 * in any browser; the chart list it draws comes from the server (`CHARTS` in series.ts).
 */

const CLIENT = String.raw`
"use strict";
var PALETTE = __PALETTE__;
var DASHES = [null, [6, 3], [2, 2], [8, 3, 2, 3]];
var state = { ready: false, updates: 0, runs: [], charts: {}, plotted: {}, errors: [] };
window.__megalith = state;
var specs = [];
var plots = {};

function fmt(v) {
  if (v == null) return "";
  var a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
  if (a < 1e-2) return v.toExponential(1);
  return String(+v.toPrecision(4));
}

function lineKey(run, series) { return run + "/" + series; }

// Adds points to a run's curve. Steps only grow within a run; a repeated step replaces the
// earlier point (uPlot needs strictly increasing x per curve).
function addPoints(chartId, run, series, points) {
  var chart = state.charts[chartId];
  var key = lineKey(run, series);
  var line = chart.lines[key];
  if (!line) {
    var spec = chart.spec.series[series];
    line = chart.lines[key] = { run: run, series: series, label: (state.runs.length > 1 ? state.runs[run].name + ": " : "") + spec.label, points: [] };
  }
  for (var i = 0; i < points.length; i++) {
    var p = points[i], pts = line.points;
    if (pts.length && pts[pts.length - 1][0] >= p[0]) {
      var j = pts.findIndex(function (q) { return q[0] >= p[0]; });
      if (pts[j][0] === p[0]) pts[j] = p; else pts.splice(j, 0, p);
    } else pts.push(p);
  }
}

function clearRun(run) {
  Object.keys(state.charts).forEach(function (id) {
    var lines = state.charts[id].lines;
    Object.keys(lines).forEach(function (k) { if (lines[k].run === run) delete lines[k]; });
  });
}

function apply(runPoints, run) {
  var touched = {};
  runPoints.forEach(function (sp) {
    addPoints(sp.chart, run, sp.series, sp.points);
    touched[sp.chart] = true;
  });
  return touched;
}

function sortedLines(id) {
  var lines = state.charts[id].lines;
  return Object.keys(lines).map(function (k) { return lines[k]; })
    .sort(function (a, b) { return a.run - b.run || a.series - b.series; });
}

function render(id) {
  var chart = state.charts[id];
  var lines = sortedLines(id);
  var box = document.getElementById("chart-" + id);
  if (!lines.length) { box.hidden = true; return; }
  box.hidden = false;
  var tables = lines.map(function (l) {
    return [l.points.map(function (p) { return p[0]; }), l.points.map(function (p) { return p[1]; })];
  });
  var data = uPlot.join(tables);
  var labels = lines.map(function (l) { return l.label; });
  var sig = labels.join("|");
  var plot = plots[id];
  if (!plot || plot.sig !== sig) {
    if (plot) plot.u.destroy();
    var logY = chart.spec.logY && lines.every(function (l) { return l.points.every(function (p) { return p[1] > 0; }); });
    var opts = {
      width: box.clientWidth - 16, height: 240,
      scales: { x: { time: false }, y: { distr: logY ? 3 : 1 } },
      axes: [
        { label: "step", values: function (u, v) { return v.map(fmt); } },
        { label: chart.spec.unit, size: 64, values: function (u, v) { return v.map(fmt); } },
      ],
      legend: { live: true },
      series: [{ label: "step", value: function (u, v) { return v == null ? "-" : String(v); } }].concat(lines.map(function (l) {
        return {
          label: l.label, spanGaps: true, width: 1.5,
          stroke: PALETTE[l.series % PALETTE.length], dash: DASHES[l.run % DASHES.length] || undefined,
          points: { show: l.points.length < 50 },
          value: function (u, v) { return fmt(v); },
        };
      })),
    };
    var target = box.querySelector(".plot");
    target.textContent = "";
    plot = plots[id] = { sig: sig, u: new uPlot(opts, data, target) };
  } else {
    plot.u.setData(data);
  }
  state.plotted[id] = { labels: labels, data: plot.u.data.map(function (col) { return Array.from(col); }) };
}

function renderAll(ids) {
  ids.forEach(render);
  state.updates++;
  var status = state.runs.map(function (r, i) {
    var loss = state.charts.loss && state.charts.loss.lines[lineKey(i, 0)];
    var last = loss && loss.points[loss.points.length - 1];
    return r.name + (last ? " (step " + last[0] + ", loss " + fmt(last[1]) + ")" : " (no steps yet)");
  });
  document.getElementById("runs").textContent = status.join("  ·  ");
}

function setup(msg) {
  specs = msg.charts;
  state.runs = msg.runs;
  var main = document.getElementById("charts");
  specs.forEach(function (spec) {
    if (!state.charts[spec.id]) {
      var box = document.createElement("section");
      box.id = "chart-" + spec.id;
      box.className = "chart";
      box.hidden = true;
      var h = document.createElement("h2");
      h.textContent = spec.title + (spec.unit ? " (" + spec.unit + ")" : "");
      var div = document.createElement("div");
      div.className = "plot";
      box.appendChild(h);
      box.appendChild(div);
      main.appendChild(box);
    }
    state.charts[spec.id] = { spec: spec, lines: {} };
  });
  msg.runs.forEach(function (r, i) { apply(r.points, i); });
  renderAll(specs.map(function (s) { return s.id; }));
  state.ready = true;
}

function connect() {
  var es = new EventSource("/api/events");
  var live = document.getElementById("live");
  es.addEventListener("snapshot", function (e) { setup(JSON.parse(e.data)); live.textContent = "live"; live.className = "on"; });
  es.addEventListener("points", function (e) {
    var msg = JSON.parse(e.data);
    renderAll(Object.keys(apply(msg.points, msg.run)));
  });
  es.addEventListener("reset", function (e) {
    var msg = JSON.parse(e.data);
    clearRun(msg.run);
    apply(msg.points, msg.run);
    renderAll(specs.map(function (s) { return s.id; }));
  });
  es.onerror = function () { live.textContent = "reconnecting"; live.className = "off"; };
}

window.addEventListener("resize", function () {
  Object.keys(plots).forEach(function (id) {
    var box = document.getElementById("chart-" + id);
    plots[id].u.setSize({ width: box.clientWidth - 16, height: 240 });
  });
});
connect();
`;

/**
 * The page's HTML. `palette` gives the series colors (the SVG plot uses the same).
 * @example reply.type("text/html").send(dashboardHtml(PALETTE));
 */
export function dashboardHtml(palette: readonly string[]): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>megalith dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/uPlot.min.css">
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #fafafa; color: #222; }
  header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 16px; margin: 0; }
  #runs { color: #555; font-size: 13px; }
  #live { font-size: 12px; margin-left: auto; }
  #live.on { color: #2a7; } #live.off { color: #c33; }
  #charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px; padding: 12px; }
  .chart { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; }
  .chart h2 { font-size: 13px; margin: 0 0 4px 4px; }
</style>
</head>
<body>
<header><h1>megalith</h1><span id="runs">loading…</span><span id="live">connecting</span></header>
<main id="charts"></main>
<script src="/assets/uPlot.iife.min.js"></script>
<script>${CLIENT.replace("__PALETTE__", JSON.stringify(palette))}</script>
</body>
</html>
`;
}
