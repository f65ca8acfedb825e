// alphabus dashboard: draws /api/state, then redraws on every server-sent "state" event (no reload).
"use strict";

const fmt = (x, digits = 2) => (x === null || x === undefined) ? "n/a" : Number(x).toFixed(digits);
const signed = (x) => (x === null || x === undefined) ? "n/a" : (x > 0 ? "+" : "") + fmt(x);
const cls = (x) => (x > 0 ? "pos" : x < 0 ? "neg" : "");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fillRows(tableId, rows, emptyText, cells) {
  const body = document.querySelector(`#${tableId} tbody`);
  const width = document.querySelectorAll(`#${tableId} thead th`).length;
  body.replaceChildren(...(rows.length ? rows.map(cells)
    : [el("tr", {}, el("td", { colspan: width, class: "muted" }, emptyText))]));
}

function card(label, value, note = "", klass = "") {
  return el("div", { class: "card" }, el("small", {}, label), el("b", { class: klass }, value), el("small", {}, note));
}

let shownNewest = null;

function drawSummary(state) {
  const row = state.latest_row, latest = state.latest, box = document.getElementById("summary");
  if (!row) { box.replaceChildren(card("rounds", "none yet", "waiting for the first selection")); return; }
  const eq = state.equity;
  box.replaceChildren(
    card("latest round", row.run_time.replace("T", " "), row.status, row.status),
    card("coverage", `${row.received}/${row.expected}`, `${row.skipped} skipped, ${row.missing} missing`),
    card("pool after filters", row.pool ?? "n/a"),
    card("latency", `${fmt(row.latency_ms, 1)} ms`, "last ready → selection"),
    card("gross exposure", `${fmt(latest.gross)} USDT`, `of ${state.capital_usdt} capital`),
    card("net exposure", `${signed(latest.net)} USDT`, `long ${fmt(latest.long_value)}, short ${fmt(latest.short_value)}`, cls(latest.net)),
    card("equity", eq && eq.last !== null ? `${signed(eq.last)} USDT` : "n/a",
         eq && eq.max_drawdown !== null ? `max drawdown ${fmt(eq.max_drawdown)}` : "no equity.csv"),
  );
}

function drawHoldings(latest) {
  const side = (id, rows) => fillRows(id, rows, "none", (r) => el("tr", {},
    el("td", {}, r.symbol), el("td", { class: `n ${cls(r.value)}` }, r.target),
    el("td", { class: "n" }, r.close === null ? "n/a" : Number(r.close).toPrecision(6)),
    el("td", { class: `n ${cls(r.value)}` }, signed(r.value))));
  side("long", latest ? latest.long : []);
  side("short", latest ? latest.short : []);
  document.getElementById("long-total").textContent = latest ? `${latest.long.length} coins, ${fmt(latest.long_value)} USDT` : "";
  document.getElementById("short-total").textContent = latest ? `${latest.short.length} coins, ${fmt(latest.short_value)} USDT` : "";
  document.getElementById("trades-since").textContent = !latest ? "" :
    latest.previous_run_time ? `since ${latest.previous_run_time.replace("T", " ")}` : "first round: from flat";
  fillRows("trades", latest ? latest.trades : [], "none: the targets did not change", (r) => el("tr", {},
    el("td", {}, r.symbol), el("td", { class: `n ${cls(r.value)}` }, r.trade),
    el("td", { class: `n ${cls(r.value)}` }, signed(r.value)), el("td", { class: "n" }, r.target)));
}

function drawRounds(state) {
  const newest = state.rounds.length ? state.rounds[0].run_time : null;
  fillRows("rounds", state.rounds, "no rounds recorded yet", (r) => {
    const tr = el("tr", { "data-run-time": r.run_time, class: r.run_time === newest && shownNewest !== null && newest !== shownNewest ? "fresh" : "" },
      el("td", {}, r.run_time.replace("T", " ")), el("td", { class: r.status }, r.status));
    if (r.status === "missed") {
      tr.append(el("td", { colspan: 5 }), el("td", { class: "missed" }, `${r.reason}: ${r.detail}`));
    } else {
      tr.append(el("td", { class: "n" }, `${r.received}/${r.expected}`), el("td", { class: "n" }, r.skipped),
        el("td", { class: "n" }, r.missing), el("td", { class: "n" }, r.pool ?? "n/a"),
        el("td", { class: "n" }, fmt(r.latency_ms, 1)),
        el("td", { class: r.status }, r.silent_shards.length ? `silent shards ${r.silent_shards.join(", ")}` : r.reason));
    }
    return tr;
  });
  shownNewest = newest;
  const problems = document.getElementById("problems");
  problems.replaceChildren(...(state.problems.length ? state.problems.map((r) =>
    el("li", { class: r.status }, `${r.run_time.replace("T", " ")} ${r.status}: ${r.reason}${r.detail ? " (" + r.detail + ")" : ""}`))
    : [el("li", { class: "muted" }, `none of the last ${state.rounds.length} round(s)`)]));
}

function drawEquity(equity) {
  const box = document.getElementById("equity");
  document.getElementById("equity-source").textContent = equity ? equity.source : "";
  if (!equity || equity.points.length === 0) return;
  const pts = equity.points, W = 1000, H = 220, pad = 30;
  const values = pts.flatMap((p) => [p.equity, p.drawdown]);
  const lo = Math.min(0, ...values), hi = Math.max(0, ...values), span = hi - lo || 1;
  const x = (i) => pad + (pts.length === 1 ? 0 : (i * (W - 2 * pad)) / (pts.length - 1));
  const y = (v) => H - pad - ((v - lo) * (H - 2 * pad)) / span;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const path = (d, attrs) => { const p = document.createElementNS(ns, "path"); p.setAttribute("d", d);
    for (const [k, v] of Object.entries(attrs)) p.setAttribute(k, v); svg.append(p); };
  path(`M${pad},${y(0)}H${W - pad}`, { stroke: "#445", "stroke-dasharray": "4 4" });
  path(`M${x(0)},${y(0)}` + pts.map((p, i) => `L${x(i)},${y(p.drawdown)}`).join("") + `L${x(pts.length - 1)},${y(0)}Z`,
       { fill: "rgba(248,81,73,.35)", stroke: "none", id: "drawdown" });
  path(pts.map((p, i) => `${i ? "L" : "M"}${x(i)},${y(p.equity)}`).join(""),
       { fill: "none", stroke: "#58a6ff", "stroke-width": 2, id: "equity-line" });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", pad); label.setAttribute("y", 18); label.setAttribute("fill", "#7d8a99");
  label.textContent = `equity ${signed(equity.last)} USDT over ${pts.length} round(s); max drawdown ${fmt(equity.max_drawdown)} USDT (red)`;
  svg.append(label);
  box.replaceChildren(svg);
}

function draw(state) {
  document.getElementById("workdir").textContent = state.workdir;
  drawSummary(state);
  drawHoldings(state.latest);
  drawRounds(state);
  drawEquity(state.equity);
  document.body.dataset.version = state.version;
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.addEventListener("state", (e) => draw(JSON.parse(e.data)));
  source.onopen = () => { live.textContent = "live"; live.className = "badge on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "badge off"; };
}

fetch("/api/state").then((r) => r.json()).then(draw).finally(connect);
