/**
 * Headless Chromium for PNG plots and the dashboard's end-to-end test, driven by playwright-core
 * (the automation library without the browser downloads: it runs Debian's `chromium`, which
 * scripts/setup.sh installs).
 *
 * The flags keep a headless run quiet and self-contained: no GPU, no background network or
 * component updates, no first-run UI, and a fresh profile directory removed afterwards.
 * --no-sandbox because CI containers run as root, where Chromium's sandbox refuses to start.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext } from "playwright-core";
import { ValueError } from "../core/errors.js";

/** Where Chromium is looked for when MEGALITH_CHROMIUM is not set. */
export const CHROMIUM_PATHS = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** The Chromium executable: $MEGALITH_CHROMIUM, else the first of CHROMIUM_PATHS that exists, else null. */
export function findChromium(): string | null {
  const env = process.env.MEGALITH_CHROMIUM;
  if (env) return existsSync(env) ? env : null;
  return CHROMIUM_PATHS.find((p) => existsSync(p)) ?? null;
}

/** A headless browser context and the cleanup that closes it and deletes its profile. */
export interface HeadlessBrowser {
  context: BrowserContext;
  close(): Promise<void>;
}

/**
 * Launches headless Chromium with a fresh profile. Throws ValueError naming the fix when no
 * Chromium is installed.
 * @example
 * const b = await launchChromium();
 * const page = await b.context.newPage();
 * await b.close();
 */
export async function launchChromium(): Promise<HeadlessBrowser> {
  const executablePath = findChromium();
  if (!executablePath) {
    throw new ValueError(`no Chromium found (looked at ${CHROMIUM_PATHS.join(", ")}; MEGALITH_CHROMIUM overrides): install it with \`apt-get install chromium\` (scripts/setup.sh does), or write an .svg instead`);
  }
  const { chromium } = await import("playwright-core");
  const userDataDir = mkdtempSync(join(tmpdir(), "megalith-chromium-"));
  try {
    const context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      chromiumSandbox: false,
      args: ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    });
    return {
      context,
      async close() {
        await context.close();
        rmSync(userDataDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw err;
  }
}
