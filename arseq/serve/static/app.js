// arseq's page: the form comes from GET /v1/model's schema; POST /v1/generate streams progress (SSE) and ends
// with the samples and the files the modality writes, shown here (audio, piano roll, images, protein table,
// text) and offered for download. A server of several models (GET /v1/models) gets a picker: choosing one
// builds the form from that model's schema. Nothing is loaded from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let controller = null;
let choosing = 0;  // the latest model chosen: a schema that arrives after another choice is dropped
const urls = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function optionInput(o) {
  const id = "opt-" + o.name;
  let input;
  if (o.choices) {
    input = el("select", { id, name: o.name });
    input.append(el("option", { value: "", text: o.default == null ? "(default)" : `(default: ${o.default})` }));
    for (const c of o.choices) input.append(el("option", { value: c, text: c }));
  } else if (o.type === "boolean") {
    input = el("input", { id, name: o.name, type: "checkbox" });
    input.checked = !!o.default;
  } else {
    const attrs = { id, name: o.name, type: o.type === "string" ? "text" : "number",
                    placeholder: o.default == null ? "default" : String(o.default) };
    if (o.type === "integer") attrs.step = "1";
    if (o.type === "number") attrs.step = "any";
    if (o.minimum != null) attrs.min = o.minimum;
    if (o.maximum != null) attrs.max = o.maximum;
    input = el("input", attrs);
  }
  input.dataset.kind = o.type;
  return el("label", { title: o.help || o.name }, o.name.replaceAll("_", " "), input);
}

async function loadModels() {
  const r = await fetch("/v1/models");
  const names = (await r.json()).data.map((m) => m.id);
  if (names.length > 1) {
    const picker = $("model-picker");
    for (const name of names) picker.append(el("option", { value: name, text: name }));
    picker.addEventListener("change", () => loadModel(picker.value).catch((e) => setStatus("could not read the model: " + e.message, true)));
    $("model-pick").hidden = false;
  }
  await loadModel(names[0]);
}

function clearResults() {
  for (const u of urls.splice(0)) URL.revokeObjectURL(u);
  $("results").replaceChildren();
  $("live").replaceChildren();
  $("live").hidden = true;
}

async function loadModel(name) {
  const mine = ++choosing;
  if (controller) controller.abort();
  const r = await fetch("/v1/model?model=" + encodeURIComponent(name));
  const schema = await r.json();
  if (!r.ok) throw new Error(schema.error.message);
  if (mine !== choosing) return;
  model = schema;
  clearResults();
  setStatus("");
  for (const box of ["conditions", "own-options", "sampling-options", "file-options"]) $(box).replaceChildren();
  $("prompt-box").hidden = true;
  $("prompt-file").value = "";
  $("file-box").hidden = !model.prompt_file;
  if (model.prompt_file) {
    $("prompt-file").accept = model.prompt_file.join(",");
    $("file-legend").textContent = model.modality === "image" ? "Complete an image" : "Continue a piece";
  }
  $("model-name").textContent = model.modality;
  const conds = Object.entries(model.conditions);
  $("model-summary").textContent = `${model.modality} model · context ${model.context} · vocabulary ${model.vocab_size}` +
    (conds.length ? " · conditioned on " + conds.map(([k]) => k).join(", ") : "");
  $("num_samples").max = model.limits.max_samples;
  for (const [name, values] of conds) {
    const select = el("select", { id: "cond-" + name, name, "data-condition": name });
    select.append(el("option", { value: "", text: "(any)" }));
    for (const v of values) select.append(el("option", { value: v, text: v }));
    $("conditions").append(el("label", {}, name, select));
  }
  $("conditions-box").hidden = conds.length === 0;
  if (model.prompt) {
    $("prompt-box").hidden = false;
    $("prompt-legend").textContent = model.prompt === "motif" ? "Start motif (residues)" : "Text to continue";
  }
  for (const o of model.options) {
    const withFile = o.name.startsWith("prompt_") || o.name.startsWith("keep_");  // options of a prompt file
    if (withFile && !model.prompt_file) continue;
    if (o.name === "prefix" && model.prompt === "motif") continue;  // the prompt box is the start motif
    if (o.group !== "sampling" && o.name in model.conditions) continue;  // an image's label: chosen with the conditions
    const visible = o.group !== "sampling" || o.name === "seed" || o.name === "max_new_tokens";
    $(withFile ? "file-options" : visible ? "own-options" : "sampling-options").append(optionInput(o));
  }
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));  // after "data:...;base64,"
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function request() {
  const body = { model: model.id, num_samples: Number($("num_samples").value || 1) };
  for (const input of document.querySelectorAll("[data-kind]")) {
    if (input.type === "checkbox") { if (input.checked) body[input.name] = true; continue; }
    if (input.value === "") continue;
    body[input.name] = input.dataset.kind === "integer" ? parseInt(input.value, 10)
      : input.dataset.kind === "number" ? Number(input.value) : input.value;
  }
  const conditions = {};
  for (const s of document.querySelectorAll("[data-condition]")) if (s.value) conditions[s.name] = s.value;
  if (Object.keys(conditions).length) body.conditions = conditions;
  if (model.prompt && $("prompt").value) body.prompt = $("prompt").value;
  const file = model.prompt_file && $("prompt-file").files[0];
  if (file) body.prompt_file = { name: file.name, data: await base64Of(file) };
  return body;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { event, data };
    }
  }
}

async function generate(ev) {
  ev.preventDefault();
  clearResults();
  $("generate").disabled = true;
  $("stop").hidden = false;
  const progress = $("progress");
  progress.hidden = false;
  progress.value = 0;
  setStatus("queued…");
  controller = new AbortController();
  let total = 1, done = 0;
  const live = [];
  try {
    const r = await fetch("/v1/generate", { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify({ ...(await request()), stream: true }), signal: controller.signal });
    if (!r.ok) {
      const e = await r.json();
      throw new Error(e.error.message);
    }
    for await (const { event, data } of sse(r)) {
      if (data === "[DONE]") break;
      const msg = JSON.parse(data);
      if (event === "start") {
        total = msg.samples * msg.max_new_tokens;
        progress.max = total;
        setStatus(`generating ${msg.samples} sample(s), seed ${msg.seed}…`);
      } else if (event === "token") {
        done += 1;
        progress.value = Math.min(done, total);
        if (msg.text !== undefined) {
          $("live").hidden = false;
          if (!live[msg.sample]) { live[msg.sample] = el("pre", { "data-sample": msg.sample }); $("live").append(live[msg.sample]); }
          live[msg.sample].textContent += msg.text;
        }
      } else if (event === "writing") {
        progress.value = total;
        setStatus(`${done} tokens; writing files…`);
      } else if (event === "result") {
        $("live").hidden = true;
        show(msg);
        setStatus(`${msg.samples.length} sample(s), ${done} tokens, seed ${msg.seed}`);
      } else if (event === "error") {
        throw new Error(msg.error.message);
      }
    }
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : "error: " + e.message, e.name !== "AbortError");
  } finally {
    $("generate").disabled = false;
    $("stop").hidden = true;
    progress.hidden = true;
    controller = null;
  }
}

function blobUrl(file) {
  const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: file.media_type }));
  urls.push(url);
  file.url = url;
  file.text = () => new TextDecoder().decode(bytes);
  return url;
}

function downloads(files) {
  return el("ul", { class: "downloads" }, ...files.map((f) => el("li", {}, el("a", { href: f.url, download: f.name, text: f.name }))));
}

function parseCsv(text) {
  const rows = text.trim().split("\n").map((l) => l.split(","));
  return rows.length ? rows.slice(1).map((r) => Object.fromEntries(rows[0].map((k, i) => [k, r[i]]))) : [];
}

function parseFasta(text) {
  const out = {};
  let id = null;
  for (const line of text.split("\n")) {
    if (line.startsWith(">")) { id = line.slice(1).split(/\s/)[0]; out[id] = ""; } else if (id) out[id] += line.trim();
  }
  return out;
}

function show(result) {
  const files = result.files;
  files.forEach(blobUrl);
  const byStem = {};
  for (const f of files) {
    const m = f.name.match(/^(sample_\d+)/);
    (byStem[m ? m[1] : "all"] ||= []).push(f);
  }
  const grid = el("div", { class: "grid" });
  const fasta = files.find((f) => f.name.endsWith(".fasta"));
  const csv = files.find((f) => f.name.endsWith(".csv"));
  if (fasta && csv) {
    const seqs = parseFasta(fasta.text());
    const rows = parseCsv(csv.text());
    const keys = rows.length ? Object.keys(rows[0]) : [];
    const table = el("table", { id: "designs" }, el("tr", {}, ...["id", "sequence", ...keys.slice(1)].map((k) => el("th", { text: k }))));
    for (const r of rows) {
      table.append(el("tr", {}, el("td", { text: r.id }), el("td", { class: "seq", text: seqs[r.id] || "" }),
                      ...keys.slice(1).map((k) => el("td", { text: r[k] }))));
    }
    grid.append(el("div", { class: "card wide" }, el("h3", { text: "Designs" }), el("div", { class: "scroll" }, table), downloads(files)));
  }
  const gridPng = files.find((f) => f.name === "grid.png");
  if (gridPng) {
    grid.append(el("div", { class: "card wide" }, el("h3", { text: "Samples" }),
                   el("img", { src: gridPng.url, alt: "grid of samples", id: "grid", width: 360 }), downloads(files)));
  }
  if (!fasta && !gridPng) {
    result.samples.forEach((s, i) => {
      const stem = `sample_${String(i).padStart(3, "0")}`;
      const mine = byStem[stem] || [];
      const card = el("div", { class: "card sample", "data-sample": i },
                      el("h3", { text: `sample ${i + 1} · perplexity ${s.perplexity.toFixed(2)}${s.stopped ? "" : " · length limit"}` }));
      const wav = mine.find((f) => f.name.endsWith(".wav"));
      if (wav) card.append(el("audio", { controls: "", src: wav.url, preload: "auto" }));
      const png = mine.find((f) => f.name.endsWith(".png"));
      if (png) card.append(el("img", { src: png.url, alt: "piano roll of " + stem }));
      const txt = mine.find((f) => f.name.endsWith(".txt"));
      if (txt) card.append(el("pre", { text: txt.text() }));
      card.append(downloads(mine));
      grid.append(card);
    });
    const rest = byStem.all || [];
    if (rest.length) grid.append(el("div", { class: "card wide" }, downloads(rest)));
  }
  $("results").replaceChildren(grid);
}

$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear-file").addEventListener("click", () => { $("prompt-file").value = ""; });
loadModels().catch((e) => setStatus("could not read the model: " + e.message, true));
