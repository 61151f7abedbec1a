/**
 * A cap on open connections that idle ones cannot fill.
 *
 * Node's own `server.maxConnections` closes every connection beyond the cap, so a few thousand
 * sockets that connect and never send (or keep-alive connections left open by careless clients)
 * would lock out /health and every real client until the header timeout reaps them. Here a new
 * connection beyond the cap instead evicts the connection that has been idle longest: one with
 * no request in flight (it never sent a complete request, or its last response is done). Only
 * when every open connection has a request in flight (streams in progress) is the new one closed.
 */
import type { Server } from "node:http";
import type { Socket } from "node:net";

/**
 * Applies the cap to `server` (before it listens).
 * @example
 * guardConnections(http.createServer(handler), 1000);
 */
export function guardConnections(server: Server, max: number): void {
  const open = new Set<Socket>();
  // Idle connections, oldest first (a Set iterates in insertion order; re-adding moves to the end).
  const idle = new Set<Socket>();
  const busy = new Map<Socket, number>();
  server.on("connection", (socket: Socket) => {
    if (open.size >= max) {
      const victim = idle.values().next().value as Socket | undefined;
      if (!victim) {
        socket.destroy();
        return;
      }
      idle.delete(victim);
      open.delete(victim);
      victim.destroy();
    }
    open.add(socket);
    idle.add(socket);
    socket.once("close", () => {
      open.delete(socket);
      idle.delete(socket);
      busy.delete(socket);
    });
  });
  server.on("request", (req, res) => {
    const socket = req.socket;
    if (!open.has(socket)) return;
    idle.delete(socket);
    busy.set(socket, (busy.get(socket) ?? 0) + 1);
    res.once("close", () => {
      const n = (busy.get(socket) ?? 1) - 1;
      if (n > 0) busy.set(socket, n);
      else {
        busy.delete(socket);
        if (open.has(socket) && !socket.destroyed) idle.add(socket);
      }
    });
  });
}
