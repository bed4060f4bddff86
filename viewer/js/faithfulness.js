// How faithful the map is, as the server measured it (faithfulness=deletion,insertion; docs/faithfulness.md):
// per curve set (an explanation's target, else the one map) the deletion and insertion AUCs of the map's
// order and of a random order, in a table, with each set's curves in a small SVG.

const METRICS = ["deletion", "insertion"];
const COLOURS = { deletion: "#d62728", insertion: "#1f77b4" }; // the client's figure's colours (tab:red, tab:blue)
const SVG = "http://www.w3.org/2000/svg";
const [WIDTH, HEIGHT] = [120, 48]; // the curves' SVG, in its own units

/** The answer's faithfulness entries ([] if none); a KServe v2 answer carries them as JSON text. */
export function faithfulnessOf(doc) {
  const value = doc?.faithfulness;
  if (!value) return [];
  return typeof value === "string" ? JSON.parse(value) : value;
}

/** A target's name with its class's label where the answer gives one (its targets, or for the top class
 * a map without a target is scored on, its predictions): ``class 281 (tabby)``. */
function labelled(target, doc) {
  const labels = new Map((doc.predictions ?? []).map((p) => [`class ${p.index}`, p.label]));
  for (const t of doc.targets ?? []) labels.set(t.target, t.label);
  const label = labels.get(target);
  return label && label !== target ? `${target} (${label})` : target;
}

/** What a curve set is of: an explanation's target; else the map the server ranked the patches by,
 * with what it scored (a classifier's top class; a backbone's own embedding, "image", goes unsaid). */
function setName(entry, doc) {
  if ((doc.targets ?? []).some((t) => t.target === entry.target)) return labelled(entry.target, doc);
  const method = doc.method ?? "attention";
  const map = method === "attention" ? `layer ${doc.layers ? Math.max(...doc.layers) : doc.layer} head mean` : method; // the deepest of layers=
  return entry.target === "image" ? map : `${map}, ${labelled(entry.target, doc)}`;
}

/** One AUC cell: the value to 3 decimals, the exact one in data-auc ("–" for a metric not asked for). */
function aucCell(metric, order, curves) {
  const cell = document.createElement("td");
  Object.assign(cell.dataset, { metric, order });
  cell.className = "auc";
  if (curves) {
    cell.dataset.auc = String(curves.auc);
    cell.textContent = curves.auc.toFixed(3);
  } else cell.textContent = "–";
  return cell;
}

/** The set's curves against k/S on [0, 1] (wider where a cosine leaves it): the map's order solid,
 * the random order's dashed in the same colour. */
function curvesSvg(entry) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "faithfulness-curves");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("role", "img");
  const drawn = METRICS.filter((m) => entry[m]).flatMap((m) => [[m, "map", entry[m].curve], [m, "random", entry.random[m].curve]]);
  const scores = [0, 1, ...drawn.flatMap(([, , curve]) => curve)];
  const [low, high] = [Math.min(...scores), Math.max(...scores)];
  const x = (k, steps) => ((k / steps) * WIDTH).toFixed(1);
  const y = (score) => (HEIGHT - ((score - low) / (high - low)) * HEIGHT).toFixed(1);
  for (const [metric, order, curve] of drawn) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", curve.map((score, k) => `${x(k, curve.length - 1)},${y(score)}`).join(" "));
    line.setAttribute("class", "curve");
    line.setAttribute("stroke", COLOURS[metric]);
    if (order === "random") line.setAttribute("stroke-dasharray", "3 2");
    Object.assign(line.dataset, { metric, order });
    svg.append(line);
  }
  const title = document.createElementNS(SVG, "title");
  title.textContent = drawn.map(([metric, order]) => `${order === "random" ? "random " : ""}${metric}`).join(", ");
  svg.append(title);
  return svg;
}

/** One table row per curve set: its name, its score, each metric's AUC and the random order's, its curves. */
function entryRow(entry, doc) {
  const row = document.createElement("tr");
  row.className = "faithfulness-entry";
  row.dataset.target = entry.target;
  const name = document.createElement("th");
  name.scope = "row";
  name.textContent = setName(entry, doc);
  const score = document.createElement("td");
  score.className = "faithfulness-score";
  score.textContent = entry.score;
  const cells = METRICS.flatMap((m) => [aucCell(m, "map", entry[m]), aucCell(m, "random", entry[m] && entry.random[m])]);
  const curves = document.createElement("td");
  curves.append(curvesSvg(entry));
  row.append(name, score, ...cells, curves);
  return row;
}

/** Fill ``panel`` (its tbody) from the answer: shown when it holds faithfulness, else hidden. */
export function showFaithfulness(panel, doc) {
  const entries = faithfulnessOf(doc);
  panel.querySelector("tbody").replaceChildren(...entries.map((entry) => entryRow(entry, doc)));
  panel.hidden = entries.length === 0;
}
