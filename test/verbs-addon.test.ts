// The ibverbs addon as npm install builds it, against the system's libibverbs: it loads without
// an RDMA device and says why none is usable. The fabric conformance suite runs on a real device
// only when TANDEM_RDMA_DEVICE names one; otherwise it is skipped with the reason printed.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ErrorCode, TandemError } from '../src/errors.js';
import { loadVerbsAddon, verbsAddonPath, verbsAvailability } from '../src/fabric/verbs/verbs-addon.js';
import { createVerbsFabric } from '../src/fabric/verbs/verbs-fabric.js';
import { realClock } from '../src/time/real-clock.js';
import { fabricConformance } from './fabric-conformance.js';

const rdmaDevice = process.env['TANDEM_RDMA_DEVICE'];
const gidIndex = Number(process.env['TANDEM_RDMA_GID_INDEX'] ?? '0');
const nativeSkipped = process.env['TANDEM_SKIP_NATIVE'] === '1';
const buildScript = fileURLToPath(new URL('../native/build.mjs', import.meta.url));

describe('verbs addon', () => {
  it.skipIf(nativeSkipped)('is built by npm install and loads', () => {
    expect(existsSync(verbsAddonPath)).toBe(true);
    const addon = loadVerbsAddon();
    expect(typeof addon).not.toBe('string');
  });

  it.skipIf(nativeSkipped)('says why no device is usable before any library is loaded, and when the library is missing', () => {
    const addon = loadVerbsAddon();
    if (typeof addon === 'string') throw new Error(addon);
    expect(addon.listDevices()).toMatchObject({ reason: 'library_missing', devices: [] });
    const missing = verbsAvailability('/nonexistent/libibverbs.so.1');
    expect(missing.reason).toBe('library_missing');
    expect(missing.message).toContain('/nonexistent/libibverbs.so.1');
  });

  it.skipIf(nativeSkipped)('reports the system libibverbs and its devices, or the right reason there are none', () => {
    const availability = verbsAvailability('libibverbs.so.1');
    console.log(`verbs availability on this machine: ${availability.reason}: ${availability.message}`);
    if (rdmaDevice) {
      expect(availability.reason).toBe('ok');
      expect(availability.devices.map((device) => device.name)).toContain(rdmaDevice);
    } else if (availability.reason !== 'library_missing') {
      // libibverbs fails the listing with ENOSYS where the kernel has no verbs support (no /sys/class/infiniband_verbs).
      const expected = existsSync('/sys/class/infiniband_verbs') ? ['no_device', 'ok'] : ['no_kernel_support'];
      expect(expected).toContain(availability.reason);
    }
    expect(availability.reason === 'ok').toBe(availability.devices.length > 0);
  });

  it.skipIf(nativeSkipped || rdmaDevice !== undefined)('refuses to create a verbs fabric without a device, with the reason, as transfer_failed', async () => {
    const error = await createVerbsFabric({ host: '127.0.0.1', clock: realClock, connectTimeoutMs: 1000, libraryPath: 'libibverbs.so.1' }).then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error).toBeInstanceOf(TandemError);
    expect((error as TandemError).code).toBe(ErrorCode.TransferFailed);
    expect((error as TandemError).message).toMatch(/verbs fabric unavailable \((no_kernel_support|no_device|library_missing)\)/);
  });

  it('never fails the install: the build script exits 0 and says why when it cannot build', () => {
    const skipped = spawnSync(process.execPath, [buildScript], { env: { ...process.env, TANDEM_SKIP_NATIVE: '1' }, encoding: 'utf8' });
    expect(skipped.status).toBe(0);
    expect(skipped.stdout).toContain('not built: TANDEM_SKIP_NATIVE=1');
    // A copy of native/ outside the project cannot find node-addon-api: the script gives up cleanly.
    const dir = mkdtempSync(join(tmpdir(), 'tandem-native-'));
    try {
      cpSync(buildScript, join(dir, 'build.mjs'));
      const stranded = spawnSync(process.execPath, [join(dir, 'build.mjs')], { env: { ...process.env, TANDEM_SKIP_NATIVE: '' }, encoding: 'utf8' });
      expect(stranded.status).toBe(0);
      expect(stranded.stdout).toMatch(/not built: .*(node-addon-api|verbs\.h)/);
      expect(stranded.stdout).toContain('the verbs fabric will report itself unavailable');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

if (!rdmaDevice) {
  console.log('verbs fabric conformance on hardware skipped: TANDEM_RDMA_DEVICE is not set (no RDMA device here); see test/verbs-fabric.test.ts for the fake verbs table');
}

describe.skipIf(!rdmaDevice || nativeSkipped)(`verbs fabric on RDMA device ${rdmaDevice ?? '(none)'}`, () => {
  fabricConformance(`verbs, two fabrics on ${rdmaDevice ?? 'no device'}`, async () => {
    const options = { host: '127.0.0.1', port: 0, clock: realClock, connectTimeoutMs: 5000, libraryPath: 'libibverbs.so.1', gidIndex, ...(rdmaDevice ? { deviceName: rdmaDevice } : {}) };
    const receiver = await createVerbsFabric(options);
    const sender = await createVerbsFabric(options);
    return {
      receiver,
      sender,
      settle: () => new Promise((resolve) => setTimeout(resolve, 50)),
      async cleanup() {
        await sender.close();
        await receiver.close();
      },
    };
  });
});
