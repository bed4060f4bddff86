// The maths of the page, free of the DOM: the server's response as patch-grid maps, their mean,
// DINO's threshold masks (as the server's vitscope/masks.py) and the masks' outlines.

/** A response document (upsample=false) -> {rows, grid, patch, labels, heads, layers, rgb, targets}:
 * rows[r][m] is a Float64Array (h * w, row-major) of map m of row r (a layer, or the one row of a
 * fused map). ``output``: the method's main output, the array holding its maps (the server's
 * description names it); ``rgb``: that output is a colour image (red, green, blue maps in [0, 1]),
 * drawn as it is. The leading axis of one row is the heads, or one fused map, or (an explanation
 * method's ``relevance``, [targets, H, W]) one map per target: then ``targets`` holds the response's
 * {target, index?, label?, score} of each map, in order, and ``heads`` their titles; else it is null. */
export function parseMaps(doc, output = "attention", rgb = false) {
  if (!doc || !Array.isArray(doc[output]) || !Array.isArray(doc.grid) || doc.upsampled) {
    throw new Error(`the response holds no patch-grid ${output} (the viewer asks upsample=false)`);
  }
  const [h, w] = doc.grid;
  const nested = doc.layers ? doc[output] : [doc[output]]; // (rows, maps, h, w)
  const rows = nested.map((maps) => maps.map((map) => flatten(map, h, w)));
  const what = doc.method ? `${doc.method}${doc.layer === undefined ? "" : ` through layer ${doc.layer}`}` : `layer ${doc.layer}`;
  const labels = doc.layers ? doc.layers.map((layer) => `layer ${layer}`) : [what];
  const layers = doc.layers ?? [doc.layer];
  const targets = !doc.layers && Array.isArray(doc.targets) && doc.targets.length === rows[0].length ? doc.targets : null;
  if (targets) return { rows, grid: [h, w], patch: doc.patch_size, labels, heads: targets.map(targetTitle), layers, rgb, targets };
  // a map per head, or one map of a method that fuses the heads (named after the method)
  const fused = rgb || rows[0].length !== doc.heads.length; // a colour image is one map of three channels
  const heads = fused ? [doc.method ?? "map"] : doc.heads.map((head) => `head ${head}`);
  return { rows, grid: [h, w], patch: doc.patch_size, labels, heads, layers, rgb, targets: null };
}

/** What a relevance map explains, with its score, as a title: ``class 281 (tabby): score 0.912``,
 * ``text:a dog: score 0.312`` (the label only where it says more than the target). */
export function targetTitle({ target, label, score }) {
  const said = label !== undefined && label !== target && `text:${label}` !== target;
  const named = said ? `${target} (${label})` : String(target);
  return typeof score === "number" ? `${named}: score ${score.toPrecision(3)}` : named;
}

function flatten(map, h, w) {
  if (map.length !== h) throw new Error(`a map has ${map.length} rows, the grid ${h}`);
  const out = new Float64Array(h * w);
  map.forEach((row, y) => out.set(row, y * w));
  return out;
}

/** The element-wise mean of several maps of one size. */
export function meanMap(maps) {
  const out = new Float64Array(maps[0].length);
  for (const map of maps) for (let i = 0; i < out.length; i++) out[i] += map[i];
  for (let i = 0; i < out.length; i++) out[i] /= maps.length;
  return out;
}

/** DINO's mask: the highest patches that together hold a fraction t of the map's mass
 * (sort ascending, normalise by the sum, keep the cumulative share > 1 - t). Uint8Array (h * w). */
export function thresholdMask(map, t) {
  const order = Array.from(map.keys()).sort((a, b) => map[a] - map[b]); // stable: ties in index order
  const running = new Float64Array(map.length);
  let sum = 0;
  order.forEach((i, rank) => (running[rank] = sum += map[i]));
  const total = sum > 0 ? sum : 1;
  const mask = new Uint8Array(map.length);
  order.forEach((i, rank) => (mask[i] = running[rank] / total > 1 - t ? 1 : 0));
  return mask;
}

/** Outline of a mask on an (h, w) grid as unit segments [x0, y0, x1, y1] in patch units: every side
 * of a kept cell whose neighbour is not kept (or outside the grid). */
export function maskOutline(mask, h, w) {
  const kept = (y, x) => y >= 0 && y < h && x >= 0 && x < w && mask[y * w + x] === 1;
  const segments = [];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!kept(y, x)) continue;
      if (!kept(y - 1, x)) segments.push([x, y, x + 1, y]);
      if (!kept(y + 1, x)) segments.push([x, y + 1, x + 1, y + 1]);
      if (!kept(y, x - 1)) segments.push([x, y, x, y + 1]);
      if (!kept(y, x + 1)) segments.push([x + 1, y, x + 1, y + 1]);
    }
  }
  return segments;
}

/** Minimum and maximum of a map (for the colour scale). */
export function range(map) {
  let low = Infinity;
  let high = -Infinity;
  for (const v of map) {
    if (v < low) low = v;
    if (v > high) high = v;
  }
  return [low, high];
}

/** Features [D, h, w] (a flat typed array) -> unit feature vectors patch by patch: {unit, dim, patches},
 * unit a Float32Array (patches * D), patch-major (a zero feature stays zero). */
export function unitFeatures(features, dim) {
  const patches = features.length / dim;
  const unit = new Float32Array(features.length);
  for (let p = 0; p < patches; p++) {
    let norm = 0;
    for (let d = 0; d < dim; d++) norm += features[d * patches + p] ** 2;
    const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
    for (let d = 0; d < dim; d++) unit[p * dim + d] = features[d * patches + p] * scale;
  }
  return { unit, dim, patches };
}

/** The cosine similarity of every patch's feature to that of patch ``index`` (Float64Array, h * w):
 * what the server's method=similarity computes, here from the features it sent once. */
export function cosineMap({ unit, dim, patches }, index) {
  const out = new Float64Array(patches);
  const ref = index * dim;
  for (let p = 0; p < patches; p++) {
    let dot = 0;
    const row = p * dim;
    for (let d = 0; d < dim; d++) dot += unit[row + d] * unit[ref + d];
    out[p] = dot;
  }
  return out;
}

/** A flat array of shape [c, h, w] as nested arrays (c maps of h rows), as a JSON answer holds it. */
export function nested(data, [c, h, w]) {
  return Array.from({ length: c }, (_, k) => Array.from({ length: h }, (_, y) => Array.from(data.subarray((k * h + y) * w, (k * h + y + 1) * w))));
}
