// Builds a Kiln job type project into a WebAssembly component:
//
//   node kiln-plugin/build.mjs NAME.wasm      (run in the project root by `kiln plugin build`)
//
// 1. bundles `src/job.ts` or `src/job.js` with the SDK's component adapter into
//    `build/bundle.js` (esbuild; componentize-js cannot follow imports on its own) and
//    appends its source map, so errors name the project's files (see sourcemap.js),
// 2. writes TypeScript declarations for the contract in `wit/` to `build/types/` in the
//    SDK folder, where the SDK's index.d.ts refers to them (jco guest-types). Beside the
//    SDK rather than in the project's own build/, so they are found however the SDK folder
//    is reached (a copy in the project, or a symlink to one shared copy),
// 3. turns the bundle into NAME.wasm (componentize-js: SpiderMonkey in a Wizer snapshot;
//    the job module's top level runs now, so a bad `defineJobType` fails here).
//
// The tools are the project's own pinned devDependencies. They are imported through a
// small module written into `build/`, so Node looks them up from the project even when
// this file is reached through a symlink (as in the Kiln repository's bundled plugins).

import { existsSync } from 'node:fs';
import { appendFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { createStackMapper } from './sourcemap.js';

/** WASI features the engine keeps. The host links WASI 0.2 with an empty context, which
 * still has clocks and random numbers. Without `random` Math.random() and
 * crypto.getRandomValues() replay the same numbers in every job; without `clocks`
 * setTimeout and performance.now() trap. stdio is dropped (its output goes nowhere; the
 * adapter sends console.* to the host log), and so are http and fetch-event (no network). */
const DISABLED_FEATURES = ['stdio', 'http', 'fetch-event'];

/** The bundle, relative to the project root: componentize-js names it so in stacks. */
const BUNDLE = 'build/bundle.js';
/** Where the bundle stores its source map for component.js (see sourcemap.js). */
const SOURCE_MAP_KEY = "Symbol.for('kiln-plugin.sourceMap')";

const root = process.cwd();
const buildDir = join(root, 'build');
/** The SDK folder (Node gives the real path when it is reached through a symlink). */
const sdkDir = dirname(fileURLToPath(import.meta.url));

class BuildError extends Error {}

function seconds(since) {
  return `${((performance.now() - since) / 1000).toFixed(1)} s`;
}

async function loadTools() {
  const shim = join(buildDir, 'kiln-tools.mjs');
  await writeFile(
    shim,
    [
      '// Written by kiln-plugin/build.mjs: imports the build tools from the project.',
      "export * as esbuild from 'esbuild';",
      "export { componentize } from '@bytecodealliance/componentize-js';",
      "export { types as witTypes } from '@bytecodealliance/jco';",
      "export { SourceMapConsumer } from 'source-map-js';",
      '',
    ].join('\n'),
  );
  try {
    return await import(pathToFileURL(shim).href);
  } catch (error) {
    if (error.code === 'ERR_MODULE_NOT_FOUND') {
      throw new BuildError(`a build tool is missing (${error.message.split('\n')[0]}); run \`npm install\` in ${root}`);
    }
    throw error;
  }
}

function findJobModule() {
  for (const name of ['src/job.ts', 'src/job.js']) {
    if (existsSync(join(root, name))) return name;
  }
  throw new BuildError(`no src/job.js (or src/job.ts) in ${root}: it must \`export default defineJobType({...})\``);
}

async function bundle(esbuild, jobModule) {
  const entry = join(buildDir, 'entry.js');
  const importPath = relative(buildDir, join(root, jobModule)).split('\\').join('/');
  await writeFile(
    entry,
    [
      '// Written by kiln-plugin/build.mjs: the component entry point.',
      `import * as job from './${importPath}';`,
      "import { exportJobType } from 'kiln-plugin/component';",
      `export const jobType = exportJobType(job.default, ${JSON.stringify(jobModule)});`,
      '',
    ].join('\n'),
  );
  const outfile = join(root, BUNDLE);
  try {
    const { warnings } = await esbuild.build({
      entryPoints: [entry],
      outfile,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      mainFields: ['module', 'main'],
      target: 'es2022',
      external: ['kiln:*'],
      // The SDK's own imports (source-map-js) come from the project's node_modules, also
      // when the SDK folder is a symlink whose real path is elsewhere.
      nodePaths: [join(root, 'node_modules')],
      sourcemap: 'external',
      sourcesContent: false,
      logLevel: 'silent',
    });
    for (const warning of warnings) console.error(`warning: ${formatMessage(warning)}`);
  } catch (error) {
    if (Array.isArray(error.errors)) {
      throw new BuildError(`bundling failed:\n${error.errors.map(formatMessage).join('\n')}`);
    }
    throw error;
  }
  return { path: outfile, sourceMap: await embedSourceMap(outfile) };
}

/**
 * Appends the bundle's source map (sources relative to the project, no contents) to the
 * bundle, after its code so no line moves, and returns it.
 */
async function embedSourceMap(bundlePath) {
  const map = JSON.parse(await readFile(`${bundlePath}.map`, 'utf8'));
  const table = {
    sources: map.sources.map((source) => relative(root, resolve(buildDir, source)).split('\\').join('/')),
    mappings: map.mappings,
  };
  await appendFile(bundlePath, `globalThis[${SOURCE_MAP_KEY}] = ${JSON.stringify(table)};\n`);
  return table;
}

/** An esbuild message as `file:line:column: text`. */
function formatMessage({ text, location }) {
  return location ? `${location.file}:${location.line}:${location.column + 1}: ${text}` : text;
}

async function generateTypes(witTypes, witDir) {
  const files = await witTypes(witDir, { worldName: 'job-plugin', guest: true });
  const outDir = join(sdkDir, 'build', 'types');
  for (const [name, content] of Object.entries(files)) {
    const path = join(outDir, name);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, content);
  }
}

async function componentizeBundle({ componentize, SourceMapConsumer }, bundle, witDir) {
  try {
    const { component } = await componentize({
      sourcePath: bundle.path,
      witPath: witDir,
      worldName: 'job-plugin',
      disableFeatures: DISABLED_FEATURES,
    });
    return component;
  } catch (error) {
    throw new BuildError(explainSnapshotError(error.message, createStackMapper(bundle.sourceMap, BUNDLE, SourceMapConsumer)));
  }
}

/**
 * componentize-js's report of a failed snapshot, cut to what the author needs: the
 * JavaScript error that stopped the job module's top level, at its source position.
 */
function explainSnapshotError(message, mapStack) {
  const call = /attempted to call an unknown imported function: '([^']+)' '([^']+)'/.exec(message);
  if (call) {
    return (
      `the job module's top level called ${call[1]}#${call[2]} while the build snapshot was taken.\n` +
      'Host and WASI calls (Math.random(), crypto, timers, log, llm, progress) work only ' +
      'inside run(); move that code there.'
    );
  }
  const noise = [/^Failed to initialize component/, /^Additionally, some promises were rejected/, /^Promise rejected but never handled/];
  const kept = message
    .trim()
    .split('\n')
    .filter((line) => !noise.some((pattern) => pattern.test(line)))
    .map(mapStack);
  return `the job module failed while loading (its top level runs at build time):\n${kept.join('\n')}`;
}

async function main() {
  const output = process.argv[2];
  if (!output || !output.endsWith('.wasm')) {
    throw new BuildError('usage: node kiln-plugin/build.mjs NAME.wasm (in the project root; NAME.wasm may be a path)');
  }
  const witDir = join(root, 'wit');
  if (!existsSync(witDir)) {
    throw new BuildError(`no wit/ folder in ${root} (it holds the contract, plugin.wit)`);
  }
  const started = performance.now();
  const jobModule = findJobModule();
  await mkdir(buildDir, { recursive: true });
  const tools = await loadTools();

  await generateTypes(tools.witTypes, witDir);
  const bundled = await bundle(tools.esbuild, jobModule);
  const component = await componentizeBundle(tools, bundled, witDir);
  const outputPath = resolve(root, output);
  await writeFile(outputPath, component);
  const mb = (component.length / 1e6).toFixed(1);
  console.log(`built ${relative(root, outputPath)} (${mb} MB) from ${jobModule} in ${seconds(started)}`);
}

try {
  await main();
} catch (error) {
  const message = error instanceof BuildError ? error.message : (error.stack ?? String(error));
  console.error(`kiln-plugin build: ${message}`);
  process.exitCode = 1;
}
