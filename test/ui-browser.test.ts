import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';

// Real headless Chromium (the Debian package), driven by playwright-core; no browser download.
const chromiumPath = process.env.TANDEM_CHROMIUM ?? '/usr/bin/chromium';
const skipReason = existsSync(chromiumPath) ? null : `${chromiumPath} is missing (apt-get install chromium); skipping the browser test`;
if (skipReason) console.warn(skipReason);

const artifacts = new URL('../test-artifacts/', import.meta.url);

describe.skipIf(skipReason !== null)('web UI in headless Chromium', () => {
  let cluster: Cluster;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  let load: Promise<unknown> | undefined;
  let stopLoad = false;

  beforeAll(async () => {
    cluster = await createCluster({ port: 0, log: silentLogger, seed: 11, prefillWorkers: 2, decodeWorkers: 2, engine: { speedup: 4 } });
    profile = mkdtempSync(join(tmpdir(), 'tandem-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1500, height: 1000 },
      timeout: 20_000,
    });
    page = context.pages()[0] ?? (await context.newPage());
  });

  afterAll(async () => {
    stopLoad = true;
    await load?.catch(() => {});
    await context?.close();
    await cluster?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  /** Keeps a few slow requests running until the test ends, so there is always something live. */
  function keepBusy(): Promise<unknown> {
    const one = async (i: number): Promise<void> => {
      for (let n = 0; !stopLoad; n++) {
        await fetch(`${cluster.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'tandem-sim', prompt: `browser ${i}.${n}`, max_tokens: 24, ignore_eos: true }),
        }).then((response) => response.text(), () => '');
      }
    };
    return Promise.all([0, 1, 2, 3].map(one));
  }

  it('shows requests appear and move, and one request with its diagram and timeline', async () => {
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(`${cluster.url}/ui`);
    await expect.poll(() => page.locator('#cluster tr[data-role="decode"]').count(), { timeout: 10_000 }).toBe(2);
    load = keepBusy();

    // Requests appear in the list and move through states: some request is seen in two states.
    const seen = new Map<string, Set<string>>();
    const moved = async (): Promise<boolean> => {
      const rows = await page.locator('#list .row[data-id]').evaluateAll((nodes) => nodes.map((n) => [n.getAttribute('data-id') ?? '', n.getAttribute('data-state') ?? '']));
      for (const [id, state] of rows) (seen.get(id!) ?? seen.set(id!, new Set()).get(id!)!).add(state!);
      return [...seen.values()].some((states) => states.size >= 2);
    };
    await expect.poll(moved, { timeout: 15_000, interval: 100 }).toBe(true);

    // Let the load finish so the list holds still, filter to finished requests and open one.
    stopLoad = true;
    await load;
    await page.locator('#state').selectOption('done');
    await page.locator('#list .row[data-state="done"]').first().waitFor({ timeout: 10_000 });
    const id = await page.locator('#list .row[data-state="done"]').first().getAttribute('data-id');
    await page.locator(`#list .row[data-id="${id}"]`).click();
    await expect.poll(() => page.locator('#detail-title').textContent(), { timeout: 5_000 }).toBe(id);
    const request = page.locator('#diagrams svg[data-machine="request"]');
    await request.waitFor();
    expect(await request.locator('g.node').count()).toBe(10);
    expect(await request.locator('g.node.current').getAttribute('data-state')).toBe('done');
    expect(await request.locator('g.node.visited').count()).toBe(8);
    expect(await request.locator('g.edge.taken').count()).toBe(7);
    expect(await page.locator('#diagrams svg[data-machine="room"]').count()).toBe(1);
    const segments = await page.locator('#timeline .segment').evaluateAll((nodes) => nodes.map((n) => n.getAttribute('data-state')));
    expect(segments).toEqual(expect.arrayContaining(['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode', 'done', 'reserved', 'computing']));

    // The text filter narrows the list to that request.
    await page.locator('#filter').fill(id!);
    await expect.poll(() => page.locator('#list .row[data-id]').count(), { timeout: 5_000 }).toBe(1);
    await page.locator('#state').selectOption('');
    await page.locator('#filter').fill('');

    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: new URL('ui-request.png', artifacts).pathname, fullPage: true });
    expect(errors).toEqual([]);
  });
});
