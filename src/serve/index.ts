/** serve: the OpenAI-compatible HTTP server. */
export { createServer, type ServerOptions } from "./server.js";
export { ServerMetrics } from "./metrics.js";
export { compileChatTemplate, loadChatTemplate, DEFAULT_CHAT_TEMPLATE, type ChatTemplate, type ChatMessage } from "./chat_template.js";
