/** serve: the OpenAI-compatible HTTP server. */
export { createServer, renderChat, type ServerOptions } from "./server.js";
export { renderMetrics } from "./metrics.js";
