// The page: controls -> one request per image/method/model (all layers at once where the method takes
// `layers`), then every slider, colour map, head or mask change redraws from the response in memory.
// The methods and their options come from the server's description (describeModel): a method added on
// the server appears here without editing this page.

import { describeModel, explain, explainBinary, listModels } from "./api.js";
import { COLORMAPS, lookupTable } from "./colormaps.js";
import { alignedImage, colourImage, colourMap, marker, outline, overlay } from "./draw.js";
import { showFaithfulness } from "./faithfulness.js";
import { cosineMap, maskOutline, meanMap, nested, parseMaps, thresholdMask, unitFeatures } from "./maps.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "vitscope-viewer-token"; // sessionStorage only: gone with the tab
const LAYER_DELAY_MS = 300; // a method without `layers` needs a request per layer: wait for the slider to settle
// What the page offers when the server does not describe itself: one layer's attention, all layers at once.
const FALLBACK = {
  default_method: "attention",
  methods: [{ name: "attention", summary: "attention", own_options: [], options: [{ name: "layers" }], outputs: [{ name: "attention" }] }],
};
// Methods whose maps the page computes itself: one request brings the features (binary, once per image,
// layer and model), and every click recomputes the map here, as the server's method would.
const IN_PAGE = { similarity: cosineMap };

const state = {
  image: null, // the File/Blob sent
  bitmap: null, // the browser's decoding of it (null if it cannot decode the format)
  description: FALLBACK, // the model's description: its facts, methods and their options
  doc: null, // the last response
  text: "", // ... as received, for "download the response"
  maps: null, // parseMaps(doc)
  features: null, // unitFeatures of the last response, for a method the page computes (IN_PAGE)
  aligned: null, // the image resized and cropped as the server reports
  selected: "mean", // "mean" or a map's index in the row (a head's, or an explanation's target's)
  lut: lookupTable("inferno"),
  mapCanvas: document.createElement("canvas"),
  means: new Map(), // row index -> mean map
  requestId: 0,
  controller: null,
  timer: 0,
  layerTimer: 0,
};
// redraw times (ms) of the moves that needed no request; clicks: a similarity computed and redrawn in the page
const stats = { lastRedrawMs: NaN, redraws: [], lastClickMs: NaN, clicks: [] };
window.viewer = { state, stats, describe: () => describe() }; // for the tests and the console

function init() {
  const params = new URLSearchParams(location.search);
  $("server").value = params.get("server") ?? `${location.protocol}//${location.hostname}:8080`;
  $("management").value = params.get("management") ?? `${location.protocol}//${location.hostname}:8081`;
  $("model").value = params.get("model") ?? "";
  $("token").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
  for (const name of COLORMAPS) $("cmap").append(new Option(name, name));
  showValues();
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("token").addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, $("token").value));
  $("refresh-models").addEventListener("click", refreshModels);
  $("model").addEventListener("change", () => describe().then((problem) => (problem ? showError(problem) : request())));
  $("file").addEventListener("change", () => $("file").files[0] && load($("file").files[0]));
  $("method").addEventListener("change", () => {
    buildMethodOptions();
    request();
  });
  $("layer").addEventListener("input", onLayer);
  $("prompt-form").addEventListener("submit", (event) => {
    event.preventDefault();
    explainPrompt();
  });
  $("cmap").addEventListener("change", () => {
    state.lut = lookupTable($("cmap").value);
    redraw(true);
  });
  for (const id of ["opacity", "mask"]) $(id).addEventListener("input", () => redraw(false));
  $("faithfulness").addEventListener("change", request);
  $("overlay").addEventListener("mousemove", hover);
  $("overlay").addEventListener("click", choosePoint);
  $("overlay").addEventListener("mouseleave", () => ($("hover").textContent = "Hover the image for a patch's value."));
  $("save-png").addEventListener("click", () => $("overlay").toBlob((blob) => download(blob, `${stem()}_attention.png`)));
  $("save-json").addEventListener("click", () => download(new Blob([state.text], { type: "application/json" }), `${stem()}.json`));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) load(file);
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) load(file);
  });
  refreshModels();
}

function showValues() {
  $("layer-value").textContent = $("layer").value;
  $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
  const t = Number($("mask").value);
  $("mask-value").textContent = t > 0 ? `${Math.round(t * 100)}%` : "off";
}

async function refreshModels() {
  let status;
  try {
    const names = await listModels($("management").value, $("token").value);
    $("models").replaceChildren(...names.map((name) => new Option(name, name)));
    if (!$("model").value && names.length) $("model").value = names[0];
    status = `Models served: ${names.join(", ") || "none"}.`;
  } catch (error) {
    status = `Could not list the models (${error.message}); type the model's name.`;
  }
  const problem = await describe();
  $("status").textContent = status + problem; // once the methods are known
}

/** Read the model's description: the methods (with their own options' controls) and its layers.
 * Returns what went wrong, to show ("" if nothing). */
async function describe() {
  const model = $("model").value.trim();
  let description = FALLBACK;
  let problem = "";
  if (model) {
    try {
      description = await describeModel($("management").value, model, $("token").value);
    } catch (error) {
      problem = ` Could not read ${model}'s description (${error.message}): attention only.`;
    }
  }
  state.description = description;
  const previous = $("method").value;
  $("method").replaceChildren(
    ...description.methods.map((m) => Object.assign(new Option(m.name, m.name), { title: m.summary })), // the summary on hover
  );
  $("method").value = description.methods.some((m) => m.name === previous) ? previous : description.default_method;
  if (description.model) {
    $("layer").max = String(description.model.layers - 1);
    $("layer").value = $("layer").max;
  }
  buildMethodOptions();
  buildModelOptions();
  showValues();
  return problem;
}

/** Controls for what this model has beyond maps, from its description: the query it pools by (where
 * it has a choice, DeiT's distillation token), predictions (a head, or a text tower's labels). */
function buildModelOptions() {
  const model = state.description.model ?? {};
  const shared = currentMethod().options ?? [];
  const wanted = [
    (model.queries ?? []).length > 1 && "query",
    (model.classes > 0 || model.text_tower) && "top_k",
    model.text_tower && "labels",
  ];
  const controls = shared.filter((o) => wanted.includes(o.name)).flatMap((o) =>
    optionControl(o.name === "query" ? { ...o, choices: model.queries } : o),
  );
  $("model-options").replaceChildren(...controls);
  $("prompt-form").hidden = !hasTextTower(model); // prompts are a text tower's targets
}

/** Whether the model takes ``text:<prompt>`` targets: its description's targets say so (or, from a
 * server that lists none, its text tower). */
function hasTextTower(model) {
  return Array.isArray(model.targets) ? model.targets.some((t) => String(t).startsWith("text:")) : model.text_tower === true;
}

/** The answer's predictions, most probable first: each a button that explains that class (a head's
 * index; a text tower's label as its prompt). */
function showPredictions(doc) {
  const list = $("predictions");
  const byIndex = (state.description.model?.classes ?? 0) > 0;
  const items = (doc.predictions ?? []).map((p) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${p.label}: ${(100 * p.probability).toFixed(1)}%`;
    button.title = `explain ${p.label}`;
    Object.assign(button.dataset, { index: String(p.index), label: p.label });
    button.addEventListener("click", () => explainTarget(byIndex ? String(p.index) : `text:${p.label}`));
    item.dataset.index = String(p.index);
    item.append(button);
    return item;
  });
  list.replaceChildren(...items);
  list.hidden = items.length === 0;
}

/** Mark the prediction the shown map explains (pressed), if one does. */
function markPredictions() {
  const shown = state.maps?.targets?.[state.selected];
  for (const button of $("predictions").querySelectorAll("button")) {
    const { index, label } = button.dataset;
    const chosen =
      shown !== undefined && (String(shown.target).startsWith("text:") ? shown.label === label : shown.index === Number(index));
    button.setAttribute("aria-pressed", String(chosen));
  }
}

/** The method a chosen class or prompt is explained by: the selected one where it takes a target
 * (legrad, chefer, gradcam), else legrad (else the first served that takes one). */
function explainingMethod() {
  const explains = (m) => (m.own_options ?? []).includes("target") && takes(m, "target");
  const current = currentMethod();
  if (explains(current)) return current;
  const methods = state.description.methods;
  return methods.find((m) => m.name === "legrad" && explains(m)) ?? methods.find(explains) ?? null;
}

/** Ask for the map of ``target`` (as the server's target= option takes it): the explanation method
 * selected, its target field set to it. The server judges it (a bad one: its 400 is shown). */
function explainTarget(target) {
  const method = explainingMethod();
  if (!method) return showError(`${$("model").value || "this model"} serves no method that explains a target (legrad, chefer, gradcam).`);
  if (method.name !== $("method").value) {
    $("method").value = method.name;
    buildMethodOptions();
  }
  $("method-options").querySelector("[data-option=target]").value = target;
  if (!state.image) return showError("Choose an image first, then a class or a prompt to explain.");
  return request();
}

/** The prompt box: target=text:<prompt>, one per prompt separated by |, as the user wrote them (an
 * empty one is sent too: the server's message says what is wrong). */
function explainPrompt() {
  const prompts = $("prompt").value.split("|").map((prompt) => `text:${prompt.trim()}`);
  return explainTarget(prompts.join("|"));
}

function currentMethod() {
  return state.description.methods.find((m) => m.name === $("method").value) ?? state.description.methods[0];
}

function takes(method, option) {
  return method.options.some((o) => o.name === option);
}

/** Whether the page computes ``method``'s maps from the features its server sends. */
function inPage(method) {
  return method.name in IN_PAGE && takes(method, "features");
}

/** A labelled control for each of the current method's own options, from the option's description. */
function buildMethodOptions() {
  const method = currentMethod();
  const controls = method.options.filter((o) => method.own_options.includes(o.name)).flatMap(optionControl);
  $("method-options").replaceChildren(...controls);
  const faithfulness = method.options.find((o) => o.name === "faithfulness"); // none for a method without one value per patch (pca)
  $("faithfulness").disabled = !faithfulness;
  $("faithfulness").title = faithfulness?.help ?? `${method.name} has no one value per patch to order the patches by`;
}

function optionControl(option) {
  const id = option.name.replaceAll("_", "-");
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = option.name.replaceAll("_", " ");
  label.title = option.help ?? "";
  let input;
  if (option.choices) {
    input = document.createElement("select");
    input.append(...option.choices.map((choice) => new Option(choice, choice)));
  } else {
    input = document.createElement("input");
    input.type = option.type === "boolean" ? "checkbox" : option.type === "number" || option.type === "integer" ? "number" : "text";
    if (input.type === "number") {
      input.step = option.type === "integer" ? "1" : "0.05";
      if (option.minimum !== undefined) input.min = String(option.minimum);
      if (option.maximum !== undefined) input.max = String(option.maximum);
    }
  }
  if (input.type === "checkbox") input.checked = option.default === true;
  else if (option.default !== undefined) input.value = String(option.default);
  if (option.type === "point") {
    input.value = "0,0"; // until a click on the image chooses one
    input.placeholder = "x,y: click the image";
  }
  input.id = id;
  input.dataset.option = option.name;
  input.dataset.type = option.type;
  input.addEventListener("change", request);
  return [label, input];
}

/** The request's fields for the current method: its own options' values, the layers, and both
 * faithfulness metrics when asked for. */
function methodFields() {
  const method = currentMethod();
  const fields = method.name === state.description.default_method ? {} : { method: method.name };
  for (const input of document.querySelectorAll("#method-options [data-option], #model-options [data-option]")) {
    if (!takes(method, input.dataset.option)) continue; // a model control this method does not take (query for legrad)
    const value = input.type === "checkbox" ? String(input.checked) : input.value.trim();
    if (value !== "") fields[input.dataset.option] = value; // an empty field is an option left out
  }
  if (takes(method, "layers")) fields.layers = "all";
  else if (takes(method, "layer")) fields.layer = $("layer").value; // legrad and chefer choose their blocks otherwise
  if ($("faithfulness").checked && takes(method, "faithfulness")) fields.faithfulness = "deletion,insertion";
  return fields;
}

async function load(file) {
  state.image = file;
  state.bitmap = await createImageBitmap(file).catch(() => null); // the server may read formats the browser cannot
  await request();
}

/** One request for the current image, model and method; the answer replaces the maps in memory. */
async function request() {
  if (!state.image) return;
  const model = $("model").value.trim();
  if (!model) return showError("Choose a model first (the Model field).");
  const fields = { upsample: "false", dtype: "float16", ...methodFields() }; // the patch grid; the page upsamples it
  state.controller?.abort();
  const controller = (state.controller = new AbortController());
  const id = ++state.requestId;
  startLoading();
  try {
    const method = currentMethod();
    const { doc, text, features } = inPage(method)
      ? await explainFeatures(model, fields, method.outputs[0].name, controller.signal)
      : await explain($("server").value, model, state.image, fields, $("token").value, controller.signal);
    if (id !== state.requestId) return;
    state.features = features ?? null;
    const main = method.outputs[0];
    const maps = parseMaps(doc, main.name, main.rgb === true); // a colour image (PCA) is drawn as it is
    Object.assign(state, { doc, text, maps, means: new Map(), selected: maps.targets ? 0 : "mean" }); // a target's map, not their mean
    if (doc.layers) $("layer").max = String(Math.max(...maps.layers));
    state.aligned = state.bitmap ? alignedImage(state.bitmap, doc.resized_size, doc.image_size) : blank(doc.image_size);
    $("error").hidden = true;
    $("save-png").disabled = $("save-json").disabled = false;
    buildGallery();
    showPredictions(doc);
    showFaithfulness($("faithfulness-panel"), doc);
    redraw(true);
  } catch (error) {
    if (error.name !== "AbortError" && id === state.requestId) showError(error.message);
  } finally {
    if (id === state.requestId) stopLoading();
  }
}

/** The method's answer with the features (binary): the document as the JSON answer would hold it,
 * and the unit features the page computes the next maps from. */
async function explainFeatures(model, fields, main, signal) {
  const { doc, arrays } = await explainBinary($("server").value, model, state.image, { ...fields, features: "true" }, $("token").value, signal);
  if (!arrays.features || !arrays[main]) throw new Error(`the response holds no features or ${main}`);
  doc.heads = String(doc.heads).split(",").map(Number); // one head is sent as "0", several as "0,1,..."
  doc[main] = nested(arrays[main].data, arrays[main].shape);
  return { doc, text: JSON.stringify(doc), features: unitFeatures(arrays.features.data, arrays.features.shape[0]) };
}

function onLayer() {
  showValues();
  const method = currentMethod();
  if (!takes(method, "layers") && !takes(method, "layer")) return; // its maps do not depend on it
  if (!takes(method, "layers")) {
    clearTimeout(state.layerTimer);
    state.layerTimer = setTimeout(request, LAYER_DELAY_MS);
  } else {
    state.means.clear();
    redraw(true);
  }
}

function currentRowIndex() {
  if (!state.doc.layers) return 0;
  const index = state.maps.layers.indexOf(Number($("layer").value));
  return index >= 0 ? index : state.maps.layers.length - 1;
}

function mean(rowIndex) {
  if (!state.means.has(rowIndex)) state.means.set(rowIndex, meanMap(state.maps.rows[rowIndex]));
  return state.means.get(rowIndex);
}

function currentMap() {
  const r = currentRowIndex();
  return state.selected === "mean" ? mean(r) : state.maps.rows[r][state.selected];
}

/** Redraw from memory: the overlay (and its mask outline), and with ``gallery`` the thumbnails. */
function redraw(gallery) {
  showValues();
  if (!state.maps) return;
  const start = performance.now();
  const { grid, patch } = state.maps;
  const [h, w] = grid;
  const canvas = $("overlay");
  if (canvas.width !== w * patch || canvas.height !== h * patch) [canvas.width, canvas.height] = [w * patch, h * patch];
  const ctx = canvas.getContext("2d");
  const map = currentMap();
  const picture = state.maps.rgb ? colourImage(state.maps.rows[0], h, w, state.mapCanvas) : colourMap(map, h, w, state.lut, state.mapCanvas);
  overlay(ctx, state.aligned, picture, Number($("opacity").value));
  if (state.doc.point) marker(ctx, state.doc.point);
  const t = state.maps.rgb ? 0 : Number($("mask").value); // DINO's masks are of attention-like maps, not of colours
  if (t > 0) {
    const mask = thresholdMask(map, t);
    outline(ctx, maskOutline(mask, h, w), patch);
    const kept = mask.reduce((a, b) => a + b, 0);
    $("mask-area").textContent = `Mask: ${kept} of ${h * w} patches hold ${Math.round(t * 100)}% of the map's mass.`;
    $("mask-area").dataset.patches = String(kept);
  } else {
    $("mask-area").textContent = "Mask: off.";
    $("mask-area").dataset.patches = "0";
  }
  if (gallery) drawGallery();
  const r = currentRowIndex();
  const title = state.maps.targets ? state.maps.heads[state.selected] : "";
  $("map-title").textContent = title; // what the map explains, and its score
  $("map-title").hidden = !title;
  markPredictions();
  const single = state.maps.heads.length === 1 && !state.maps.targets;
  const what = single ? "" : `, ${state.selected === "mean" ? "head mean" : state.maps.heads[state.selected]}`;
  const d = state.doc;
  $("caption").textContent =
    `${d.model}, ${state.maps.labels[r]}${what}; image ${d.image_size[0]}x${d.image_size[1]} ` +
    `(${d.input_size[0]}x${d.input_size[1]} resized to ${d.resized_size[0]}x${d.resized_size[1]}, cropped), ` +
    `grid ${h}x${w}, patch ${patch}, weights ${d.weights}, ${d.precision}`;
  stats.lastRedrawMs = performance.now() - start;
  stats.redraws.push(stats.lastRedrawMs);
  $("redraw").textContent = `Redrawn in ${stats.lastRedrawMs.toFixed(1)} ms.`;
}

function buildGallery() {
  const { heads, targets } = state.maps;
  // an explanation: each target's map (their mean explains nothing); else the head mean and each head
  const names = targets ? [...heads.keys()] : heads.length > 1 ? ["mean", ...heads.keys()] : ["mean"];
  $("gallery").setAttribute("aria-label", targets ? "Maps: one per target" : "Maps: the head mean and every head");
  $("gallery").replaceChildren(
    ...names.map((key) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.key = String(key);
      const label = document.createElement("span");
      label.textContent = key === "mean" ? (state.maps.heads.length > 1 ? "head mean" : state.maps.heads[0]) : state.maps.heads[key];
      button.append(document.createElement("canvas"), label);
      button.addEventListener("click", () => {
        state.selected = key;
        redraw(true);
      });
      return button;
    }),
  );
}

function drawGallery() {
  const [h, w] = state.maps.grid;
  const row = state.maps.rows[currentRowIndex()];
  for (const button of $("gallery").children) {
    const key = button.dataset.key === "mean" ? "mean" : Number(button.dataset.key);
    const canvas = button.querySelector("canvas");
    if (state.maps.rgb) colourImage(row, h, w, canvas);
    else colourMap(key === "mean" ? mean(currentRowIndex()) : row[key], h, w, state.lut, canvas);
    button.setAttribute("aria-pressed", String(key === state.selected));
  }
}

function hover(event) {
  if (!state.maps) return;
  const [x, y] = pixelAt(event);
  const [h, w] = state.maps.grid;
  const row = Math.min(h - 1, Math.floor(y / state.maps.patch));
  const column = Math.min(w - 1, Math.floor(x / state.maps.patch));
  const i = row * w + column;
  const value = state.maps.rgb
    ? `rgb(${state.maps.rows[0].map((channel) => channel[i].toFixed(2)).join(", ")})`
    : currentMap()[i].toPrecision(4);
  $("hover").textContent = `Patch row ${row}, column ${column}: ${value}`;
}

/** A click on the image: where a method takes a point (similarity), it is that pixel. A method the page
 * computes is recomputed here from the features in memory (unless its faithfulness is asked for); any
 * other asks the server again. */
function choosePoint(event) {
  const input = $("method-options").querySelector("[data-type=point]");
  if (!input || !state.maps) return;
  const start = performance.now();
  const [x, y] = pixelAt(event);
  input.value = `${x},${y}`;
  const method = currentMethod();
  const scored = $("faithfulness").checked; // the server scores the new map's faithfulness: ask it
  if (!state.features || !inPage(method) || state.doc.method !== method.name || scored) return request();
  const [h, w] = state.maps.grid;
  const patch = [Math.min(h - 1, Math.floor(y / state.maps.patch)), Math.min(w - 1, Math.floor(x / state.maps.patch))];
  const map = IN_PAGE[method.name](state.features, patch[0] * w + patch[1]);
  state.maps.rows = [[map]];
  state.means.clear();
  state.doc = { ...state.doc, point: [x, y], patch, [method.outputs[0].name]: nested(Float64Array.from(map), [1, h, w]) };
  state.text = JSON.stringify(state.doc);
  redraw(true);
  stats.lastClickMs = performance.now() - start;
  stats.clicks.push(stats.lastClickMs);
  $("redraw").textContent = `Similarity computed in the page and redrawn in ${stats.lastClickMs.toFixed(1)} ms.`;
}

/** The image pixel [x, y] under a pointer event on the overlay (the canvas may be shown scaled). */
function pixelAt(event) {
  const canvas = $("overlay");
  const x = Math.min(canvas.width - 1, Math.floor((event.offsetX * canvas.width) / canvas.clientWidth));
  const y = Math.min(canvas.height - 1, Math.floor((event.offsetY * canvas.height) / canvas.clientHeight));
  return [x, y];
}

function blank([height, width]) {
  const canvas = document.createElement("canvas");
  [canvas.height, canvas.width] = [height, width];
  return canvas;
}

function showError(message) {
  $("error").textContent = message; // text, never HTML
  $("error").hidden = false;
}

function startLoading() {
  const start = performance.now();
  $("loading").hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(() => ($("elapsed").textContent = ((performance.now() - start) / 1000).toFixed(1)), 100);
}

function stopLoading() {
  clearInterval(state.timer);
  $("loading").hidden = true;
}

function stem() {
  return (state.image?.name ?? "image").replace(/\.[^.]*$/, "") || "image";
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

init();
