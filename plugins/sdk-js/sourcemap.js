// Maps positions in the bundle (`build/bundle.js:LINE:COLUMN`) back to the project's own
// files, so a stack from inside the component names `src/job.js:42:11` instead of a line
// of a file the author never wrote. build.mjs appends esbuild's source map (without the
// sources) to the bundle, and uses this module itself for errors raised at build time.
// The source map is read by `source-map-js`; the caller passes its `SourceMapConsumer`
// (the component bundles it, build.mjs imports it from the project's node_modules).

/**
 * A function that rewrites every `FILE:LINE:COLUMN` of the bundle in a text to the original
 * position, given the source map's `{sources, mappings}`, the bundle's name as stacks
 * print it (e.g. `build/bundle.js`) and source-map-js's `SourceMapConsumer`. Positions are
 * 1-based, as in stacks; the map is parsed on first use, which is when something failed.
 */
export function createStackMapper({ sources, mappings }, bundleName, SourceMapConsumer) {
  let consumer = null;
  const escaped = bundleName.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const pattern = new RegExp(`${escaped}:(\\d+):(\\d+)`, 'g');
  const lookup = (line, column) => {
    consumer ??= new SourceMapConsumer({ version: 3, sources, names: [], mappings });
    const original = consumer.originalPositionFor({ line, column: column - 1 });
    return original.source === null ? null : `${original.source}:${original.line}:${original.column + 1}`;
  };
  return (text) =>
    text.replace(pattern, (whole, line, column) => lookup(Number(line), Number(column)) ?? whole);
}
