// Builds the ibverbs addon (and the fake verbs library the tests load) with node-gyp. Run by
// `npm install`; it never fails the install: where the build cannot happen it says why, and the
// verbs fabric then reports itself unavailable at run time.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const verbsHeader = '/usr/include/infiniband/verbs.h';

function say(line) {
  console.log(`tandem native: ${line}`);
}

function giveUp(why) {
  say(`not built: ${why}`);
  say('the verbs fabric will report itself unavailable; every other fabric works as before');
  process.exit(0);
}

/** node-gyp as npm hands it to install scripts, else the copy bundled with npm, else a dependency. */
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  try {
    candidates.push(require.resolve('node-gyp/bin/node-gyp.js'));
  } catch {
    // Not installed as a dependency; the other candidates may still exist.
  }
  return candidates.find((candidate) => candidate && existsSync(candidate));
}

if (process.env.TANDEM_SKIP_NATIVE === '1') giveUp('TANDEM_SKIP_NATIVE=1');
if (process.platform !== 'linux') giveUp(`RDMA verbs are only supported on Linux, not ${process.platform}`);
if (!existsSync(verbsHeader)) giveUp(`${verbsHeader} is missing (apt-get install libibverbs-dev)`);
try {
  require.resolve('node-addon-api');
} catch {
  giveUp('node-addon-api is not installed');
}
const nodeGyp = findNodeGyp();
if (!nodeGyp) giveUp('node-gyp was not found (neither npm_config_node_gyp nor the copy bundled with npm)');

// `npx tandem` runs this script again when it links the project into its cache: skip the build
// when both outputs are newer than every source and were built for this Node ABI.
const outputs = ['tandem_verbs.node', 'fake_verbs.so'].map((name) => join(nativeDir, 'build', 'Release', name));
const stampFile = join(nativeDir, 'build', 'tandem-stamp.json');
const stamp = JSON.stringify({ modules: process.versions.modules, arch: process.arch });
function newestSourceMs() {
  const files = ['binding.gyp', 'build.mjs', ...['src', 'fake'].flatMap((dir) => readdirSync(join(nativeDir, dir)).map((name) => join(dir, name)))];
  return Math.max(...files.map((file) => statSync(join(nativeDir, file)).mtimeMs));
}
const upToDate =
  process.env.TANDEM_REBUILD_NATIVE !== '1' &&
  outputs.every((file) => existsSync(file)) &&
  existsSync(stampFile) &&
  readFileSync(stampFile, 'utf8') === stamp &&
  Math.min(...outputs.map((file) => statSync(file).mtimeMs)) > newestSourceMs();
if (upToDate) {
  say('tandem_verbs.node and fake_verbs.so are up to date (TANDEM_REBUILD_NATIVE=1 rebuilds)');
  process.exit(0);
}

const args = [nodeGyp, 'rebuild', '--loglevel=warn'];
// Build against the headers of the running Node when they are installed next to it, so nothing is downloaded.
const localNode = resolve(dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && existsSync(join(localNode, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${localNode}`);

say(`building native/build/Release/tandem_verbs.node with ${nodeGyp}`);
const startedAt = process.hrtime.bigint();
const result = spawnSync(process.execPath, args, { cwd: nativeDir, stdio: ['ignore', 'inherit', 'inherit'] });
const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
if (result.error) giveUp(`node-gyp could not start: ${result.error.message}`);
if (result.status !== 0) giveUp(`node-gyp exited with ${result.status ?? result.signal} after ${seconds.toFixed(1)} s (see its output above)`);
writeFileSync(stampFile, stamp);
say(`built tandem_verbs.node and fake_verbs.so in ${seconds.toFixed(1)} s`);
