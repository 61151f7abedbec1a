/**
 * The dashboard's HTTP server (fastify, as `megalith serve`): the page, uPlot from
 * node_modules, and a server-sent-event stream of chart points.
 *
 *   GET /                       the page (page.ts)
 *   GET /assets/uPlot.*         uPlot's browser build and stylesheet
 *   GET /api/snapshot           every run's points now, as JSON
 *   GET /api/events             SSE: `snapshot` on connect, then `points` / `reset` as files change
 *
 * The server reads each metrics.jsonl incrementally (runs.ts) and turns rows into points once
 * (series.ts), so the browser only draws.
 */
import Fastify, { type FastifyInstance } from "fastify";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { ServerResponse } from "node:http";
import { ValueError } from "../core/errors.js";
import { dashboardHtml } from "./page.js";
import { watchRuns, type RunSource } from "./runs.js";
import { CHARTS, rowsToPoints, type SeriesPoints } from "./series.js";
import { PALETTE } from "./svg.js";

/** Options of `startDashboard()`. */
export interface DashboardOptions {
  runs: readonly RunSource[];
  /** Interface to listen on. Default "127.0.0.1" (metrics stay on this machine). */
  host?: string;
  /** Port; 0 picks a free one. Default 6006. */
  port?: number;
  /** Poll interval beside fs.watch, ms. Default 500. */
  pollMs?: number;
}

/** A running dashboard. */
export interface Dashboard {
  url: string;
  app: FastifyInstance;
  close(): Promise<void>;
}

/** uPlot's browser files, resolved through the package system (hoisting does not matter). */
function uplotAssets(): Record<string, { type: string; body: string }> {
  const require = createRequire(import.meta.url);
  return {
    "uPlot.iife.min.js": { type: "text/javascript; charset=utf-8", body: readFileSync(require.resolve("uplot/dist/uPlot.iife.min.js"), "utf8") },
    "uPlot.min.css": { type: "text/css; charset=utf-8", body: readFileSync(require.resolve("uplot/dist/uPlot.min.css"), "utf8") },
  };
}

/**
 * Starts the dashboard and begins watching the runs' metrics files.
 * @example
 * const d = await startDashboard({ runs: resolveRuns(["runs/tiny"]), port: 6006 });
 * console.log(d.url); // http://127.0.0.1:6006/
 */
export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const port = opts.port ?? 6006;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ValueError(`dashboard: --port must be an integer in 0..65535, got ${port}`);
  const host = opts.host ?? "127.0.0.1";
  const runs = opts.runs;
  const rows: Record<string, unknown>[][] = runs.map(() => []);
  const clients = new Set<ServerResponse>();
  const send = (event: string, data: unknown): void => {
    const msg = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const c of clients) c.write(msg);
  };
  const snapshot = (): { charts: typeof CHARTS; runs: Array<{ name: string; dir: string; points: SeriesPoints[] }> } => ({
    charts: CHARTS,
    runs: runs.map((r, i) => ({ name: r.name, dir: r.dir, points: rowsToPoints(rows[i]!) })),
  });

  const stop = watchRuns(runs, (i, read) => {
    if (read.reset) {
      rows[i] = read.rows;
      send("reset", { run: i, points: rowsToPoints(read.rows) });
    } else {
      rows[i]!.push(...read.rows);
      if (read.rows.length) send("points", { run: i, points: rowsToPoints(read.rows) });
    }
  }, { pollMs: opts.pollMs });

  const assets = uplotAssets();
  const html = dashboardHtml(PALETTE);
  const app = Fastify({ logger: false });
  app.get("/", async (_req, reply) => reply.type("text/html; charset=utf-8").send(html));
  app.get("/favicon.ico", async (_req, reply) => reply.code(204).send());
  app.get<{ Params: { name: string } }>("/assets/:name", async (req, reply) => {
    const a = assets[req.params.name];
    if (!a) return reply.code(404).send({ error: `no asset ${req.params.name}` });
    return reply.type(a.type).header("cache-control", "max-age=3600").send(a.body);
  });
  app.get("/api/snapshot", async () => snapshot());
  app.get("/api/events", (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
    res.write(`event: snapshot\ndata: ${JSON.stringify(snapshot())}\n\n`);
    clients.add(res);
    req.raw.on("close", () => clients.delete(res));
  });
  // A comment line now and then keeps proxies from closing an idle stream.
  const heartbeat = setInterval(() => { for (const c of clients) c.write(": keep-alive\n\n"); }, 15000);
  heartbeat.unref();

  await app.listen({ host, port });
  const addr = app.server.address();
  const bound = typeof addr === "object" && addr ? addr.port : port;
  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    url: `http://${shownHost}:${bound}/`,
    app,
    async close() {
      stop();
      clearInterval(heartbeat);
      for (const c of clients) c.end();
      clients.clear();
      await app.close();
    },
  };
}
