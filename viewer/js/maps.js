// The maths of the page, free of the DOM: the server's response as patch-grid maps, their mean,
// DINO's threshold masks (as the server's dino_attention/masks.py) and the masks' outlines.

/** A response document (upsample=false) -> {rows, grid, patch, labels, heads, layers, rgb}: rows[r][m]
 * is a Float64Array (h * w, row-major) of map m of row r (a layer, or the one row of a fused map).
 * ``output``: the method's main output, the array holding its maps (the server's description names
 * it); ``rgb``: that output is a colour image (red, green, blue maps in [0, 1]), drawn as it is. */
export function parseMaps(doc, output = "attention", rgb = false) {
  if (!doc || !Array.isArray(doc[output]) || !Array.isArray(doc.grid) || doc.upsampled) {
    throw new Error(`the response holds no patch-grid ${output} (the viewer asks upsample=false)`);
  }
  const [h, w] = doc.grid;
  const nested = doc.layers ? doc[output] : [doc[output]]; // (rows, maps, h, w)
  const rows = nested.map((maps) => maps.map((map) => flatten(map, h, w)));
  // a map per head, or one map of a method that fuses the heads (named after the method)
  const fused = rgb || rows[0].length !== doc.heads.length; // a colour image is one map of three channels
  const labels = doc.layers ? doc.layers.map((layer) => `layer ${layer}`) : [doc.method ? `${doc.method} through layer ${doc.layer}` : `layer ${doc.layer}`];
  const heads = fused ? [doc.method ?? "map"] : doc.heads.map((head) => `head ${head}`);
  return { rows, grid: [h, w], patch: doc.patch_size, labels, heads, layers: doc.layers ?? [doc.layer], rgb };
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
