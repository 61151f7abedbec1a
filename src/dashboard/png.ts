/**
 * PNG plots: the SVG of svg.ts, rasterized by headless Chromium (a screenshot of the SVG at its
 * own size). One renderer, two formats: the PNG shows exactly the SVG's curves.
 */
import { launchChromium } from "./chromium.js";

/**
 * Rasterizes an SVG document (with width/height attributes) to PNG bytes.
 * @example writeFileSync("curves.png", await svgToPng(renderSvg(runs)));
 */
export async function svgToPng(svg: string): Promise<Buffer> {
  const w = Number(/width="(\d+(?:\.\d+)?)"/.exec(svg)?.[1] ?? 1200);
  const h = Number(/height="(\d+(?:\.\d+)?)"/.exec(svg)?.[1] ?? 800);
  const browser = await launchChromium();
  try {
    const page = await browser.context.newPage();
    await page.setViewportSize({ width: Math.ceil(w), height: Math.ceil(h) });
    await page.setContent(`<!doctype html><html><head><style>html,body{margin:0;padding:0;background:#fff}svg{display:block}</style></head><body>${svg}</body></html>`);
    return await page.locator("svg").first().screenshot({ type: "png" });
  } finally {
    await browser.close();
  }
}
