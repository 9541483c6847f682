// The try-it page: one or two requests to /v1/chat/completions, each with its own budget, and what ran.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, info: null, imageUrl: null };

function formatFlops(value) {
  const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]];
  for (const [scale, suffix] of units) {
    if (value >= scale) return `${(value / scale).toFixed(1)}${suffix}`;
  }
  return `${value.toFixed(0)}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function updateAskButton() {
  $("ask").disabled = !(state.model && state.imageUrl && $("question").value.trim());
}

function bindSlider(id) {
  const slider = $(id);
  const output = $(`${id}-value`);
  const show = () => { output.value = Number(slider.value).toFixed(2); };
  slider.addEventListener("input", show);
  show();
}

// A server started with --api-key answers 401 without it: ask once, keep it for this tab, retry.
async function api(path, options = {}) {
  const send = () => {
    const key = sessionStorage.getItem("adallava-api-key");
    const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    return fetch(path, { ...options, headers });
  };
  let response = await send();
  if (response.status === 401) {
    const key = window.prompt("This server needs an API key (adallava serve --api-key):");
    if (key) {
      sessionStorage.setItem("adallava-api-key", key.trim());
      response = await send();
    }
  }
  return response;
}

async function loadModel() {
  try {
    const response = await api("/v1/models");
    const body = await response.json();
    const entry = body.data[0];
    state.model = entry.id;
    state.info = entry.adallava;
    const info = state.info;
    for (const id of ["budget-a", "budget-b"]) {
      const slider = $(id);
      slider.min = info.min_budget;
      slider.value = id === "budget-a" ? 1 : info.min_budget;
      slider.dispatchEvent(new Event("input"));
    }
    if (info.adaptive) {
      $("model-info").textContent =
        `${entry.id}: ${info.num_layers} layers, ${info.switches} switches in layers ` +
        `${info.num_prefix_layers}–${info.num_layers - 1}; budgets from ${info.min_budget} (prefix only) to 1`;
    } else {
      $("model-info").textContent = `${entry.id}: base model (no scheduler), every layer runs`;
      $("budgets").hidden = true;
      $("budget-note").hidden = true;
      $("deadline-row").hidden = true;
      $("compare").parentElement.hidden = true;
    }
    $("max-tokens").max = info.max_tokens_limit;
  } catch (error) {
    $("model-info").textContent = "could not reach the server";
    showError(`GET /v1/models failed: ${error}`);
  }
  updateAskButton();
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function ask(budget) {
  const body = {
    model: state.model,
    max_tokens: Number($("max-tokens").value) || 16,
    messages: [{
      role: "user",
      content: [
        { type: "image_url", image_url: { url: state.imageUrl } },
        { type: "text", text: $("question").value.trim() },
      ],
    }],
  };
  if (state.info.adaptive) body.budget = budget;
  const response = await api("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : `HTTP ${response.status}`);
  return data;
}

function renderStrip(strip, plan) {
  const executed = new Set(plan.layers);
  const prefix = state.info.num_prefix_layers;
  strip.replaceChildren();
  for (let layer = 0; layer < plan.num_layers; layer++) {
    const box = document.createElement("span");
    box.className = "layer";
    if (layer < prefix) box.classList.add("prefix");
    if (executed.has(layer)) box.classList.add("on");
    let title = `layer ${layer}: ${executed.has(layer) ? "ran" : "skipped"}${layer < prefix ? " (always runs)" : ""}`;
    if (plan.head_units && executed.has(layer) && layer >= prefix) {
      const units = plan.head_units[layer];
      const most = Math.max(...plan.head_units);
      box.style.setProperty("--fill", `${Math.round((100 * units) / most)}%`);
      box.classList.add("partial");
      title += `, ${units} head units`;
    }
    box.title = title;
    box.textContent = layer;
    strip.appendChild(box);
  }
  strip.setAttribute("aria-label", `${plan.layers.length} of ${plan.num_layers} layers ran`);
}

function renderResult(tag, budget, data) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  const report = data.adallava;
  card.dataset.tag = tag;
  card.querySelector(".tag").textContent = tag;
  card.querySelector(".tag").classList.toggle("b", tag === "B");
  card.querySelector(".budget-value").textContent =
    report.budget === null ? "— (base model)" : report.budget.toFixed(2);
  const answer = data.choices[0].message.content;
  card.querySelector(".answer").textContent = answer || "(empty answer)";
  renderStrip(card.querySelector(".strip"), report.plan);
  card.querySelector(".strip-caption").innerHTML =
    `${report.plan.layers.length}/${report.plan.num_layers} layers ran` +
    '<span class="legend"><span class="key prefix"></span>always run<span class="key upper"></span>chosen' +
    '<span class="key off"></span>skipped</span>' +
    (report.plan.head_units ? '<span class="legend">bar height: share of head units run</span>' : "");
  const llm = report.prefill_flops.llm;
  const fullLlm = report.full_prefill_flops.llm;
  card.querySelector(".flops-llm").textContent =
    `${formatFlops(llm)} / ${formatFlops(fullLlm)} (${((100 * llm) / fullLlm).toFixed(0)}%)`;
  card.querySelector(".flops-total").textContent =
    `${formatFlops(report.prefill_flops.total)} / ${formatFlops(report.full_prefill_flops.total)}`;
  card.querySelector(".flops-decode").textContent = formatFlops(report.decode_flops.llm);
  card.querySelector(".time").textContent =
    `prefill ${report.prefill_ms.toFixed(0)} ms · decode ${report.decode_ms.toFixed(0)} ms`;
  card.querySelector(".queue").textContent =
    `${report.queue_ms.toFixed(0)} ms, batch of ${report.batch_size}`;
  if (report.deadline) {
    const d = report.deadline;
    card.querySelector(".budget-value").textContent =
      `${report.budget.toFixed(2)} (deadline ${d.deadline_ms} ms)`;
    card.querySelector(".deadline-term").hidden = false;
    const deadline = card.querySelector(".deadline");
    deadline.hidden = false;
    deadline.classList.toggle("missed", !d.met);
    deadline.textContent =
      `${d.met ? "met" : "missed"}: ${d.measured_ms.toFixed(0)} ms of ${d.deadline_ms} ms ` +
      `(predicted ${d.predicted_ms.toFixed(0)} ms, slowdown ${d.slowdown.toFixed(2)})`;
  }
  return card;
}

async function onAsk() {
  showError("");
  const compare = $("compare").checked;
  const deadlineMode = $("deadline-mode").checked;
  const runs = [["A", deadlineMode ? `${Number($("deadline-ms").value)}ms` : Number($("budget-a").value)]];
  if (compare) runs.push(["B", Number($("budget-b").value)]);
  $("ask").disabled = true;
  $("ask").textContent = "Asking…";
  try {
    // Sent together, so the server batches them: one generate call, two budgets.
    const answers = await Promise.all(runs.map(([, budget]) => ask(budget)));
    const cards = runs.map(([tag, budget], i) => renderResult(tag, budget, answers[i]));
    $("results").replaceChildren(...cards);
    $("results").classList.toggle("two", cards.length === 2);
  } catch (error) {
    showError(error.message);
  } finally {
    $("ask").textContent = "Ask";
    updateAskButton();
  }
}

$("image").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  state.imageUrl = await readImage(file);
  $("preview").src = state.imageUrl;
  $("preview").hidden = false;
  $("drop-hint").hidden = true;
  updateAskButton();
});
$("question").addEventListener("input", updateAskButton);
$("deadline-mode").addEventListener("change", () => {
  const on = $("deadline-mode").checked;
  $("deadline-ms").disabled = !on;
  $("budget-a").disabled = on;
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !$("ask").disabled) {
    event.preventDefault();
    onAsk();
  }
});
$("compare").addEventListener("change", () => { $("budget-b-row").hidden = !$("compare").checked; });
$("ask").addEventListener("click", onAsk);
bindSlider("budget-a");
bindSlider("budget-b");
loadModel();
