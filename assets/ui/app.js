// strangler's diff viewer: reads /diffs/summary, /diffs and /diffs/{id} from this admin listener
// and renders them. Everything from the store is inserted as text (textContent), never as markup,
// so a stored body cannot run script here; the page's CSP allows no inline script either.
"use strict";

const TOKEN_KEY = "strangler-admin-token";
const SVG = "http://www.w3.org/2000/svg";
const view = document.getElementById("view");

// ---------------------------------------------------------------------------------------------
// Small DOM helpers.

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function percent(fraction) {
  if (fraction === undefined || fraction === null) return "–";
  return (fraction * 100).toFixed(fraction > 0 && fraction < 0.001 ? 3 : 1) + " %";
}

function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7200000) return `${Math.round(ms / 60000)} min`;
  return `${Math.round(ms / 3600000)} h`;
}

function time(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

function show(...nodes) {
  view.replaceChildren(...nodes);
}

function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren();
  parts.forEach((part, index) => {
    if (index) nav.append(" › ");
    nav.append(part);
  });
}

// ---------------------------------------------------------------------------------------------
// Location: `#/`, `#/route/NAME`, `#/exchange/ID`, each with the filters as a query.

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function href(parts, params) {
  const path = "#/" + parts.map(encodeURIComponent).join("/");
  const query = params && params.toString();
  return query ? path + "?" + query : path;
}

function filterParams(params, names) {
  const kept = new URLSearchParams();
  for (const name of names) if (params.get(name)) kept.set(name, params.get(name));
  return kept;
}

// ---------------------------------------------------------------------------------------------
// The token: kept in this tab's sessionStorage, sent as a header, never put in a URL.

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { headers, credentials: "omit", cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const parameter = body.parameter ? ` (parameter ${body.parameter})` : "";
    throw new Error(`${response.status}: ${body.error || response.statusText}${parameter}`);
  }
  return body;
}

function askForToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message || "";
  document.getElementById("token").focus();
  show(el("p", { class: "muted", text: "Waiting for the admin token." }));
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  document.getElementById("token-form").hidden = true;
  render();
});

document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  render();
});

// ---------------------------------------------------------------------------------------------
// Filters.

const filterInputs = {
  route: document.getElementById("filter-route"),
  verdict: document.getElementById("filter-verdict"),
  since: document.getElementById("filter-since"),
  generation: document.getElementById("filter-generation"),
};

function syncFilters(params, routes) {
  const select = filterInputs.route;
  const known = new Set([...select.options].map((o) => o.value));
  for (const route of routes || []) {
    if (!known.has(route)) {
      select.append(el("option", { value: route, text: route }));
      known.add(route);
    }
  }
  for (const [name, input] of Object.entries(filterInputs)) input.value = params.get(name) || "";
}

document.getElementById("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, input] of Object.entries(filterInputs)) if (input.value.trim()) params.set(name, input.value.trim());
  const route = params.get("route");
  params.delete("route");
  location.hash = route ? href(["route", route], params) : href([], params);
});

document.getElementById("filter-clear").addEventListener("click", () => {
  location.hash = "#/";
});

// ---------------------------------------------------------------------------------------------
// Overview: every route and direction.

function trendChart(trend) {
  const width = 120, height = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "trend");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const most = Math.max(1, ...trend.map((p) => p.exchanges));
  const step = width / Math.max(1, trend.length);
  const title = document.createElementNS(SVG, "title");
  title.textContent = "exchanges per time bucket; red: differing, yellow: noise";
  svg.append(title);
  trend.forEach((point, index) => {
    const bar = (value, offset, cls) => {
      const h = (value / most) * height;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", cls);
      rect.setAttribute("x", (index * step + 0.5).toFixed(2));
      rect.setAttribute("width", Math.max(1, step - 1).toFixed(2));
      rect.setAttribute("y", (height - offset - h).toFixed(2));
      rect.setAttribute("height", h.toFixed(2));
      svg.append(rect);
      return h;
    };
    bar(point.exchanges, 0, "all");
    const bad = bar(point.differing, 0, "bad");
    bar(point.noise, bad, "noise");
  });
  return svg;
}

function sortableTable(columns, rows, initial) {
  const table = el("table", { id: "overview-table" });
  const head = el("tr");
  const body = el("tbody");
  let sortBy = initial, descending = true;
  const fill = () => {
    const column = columns[sortBy];
    const sorted = [...rows].sort((a, b) => {
      const x = column.key(a), y = column.key(b);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    body.replaceChildren(...sorted.map((row) => el("tr", { "data-route": row.route }, columns.map((c) => el("td", { class: c.num ? "num" : "" }, c.cell(row))))));
    [...head.children].forEach((th, index) => {
      th.classList.toggle("sorted-desc", index === sortBy && descending);
      th.classList.toggle("sorted-asc", index === sortBy && !descending);
    });
  };
  columns.forEach((column, index) => {
    head.append(el("th", {
      class: "sortable" + (column.num ? " num" : ""),
      text: column.title,
      title: "sort",
      onclick: () => {
        descending = sortBy === index ? !descending : true;
        sortBy = index;
        fill();
      },
    }));
  });
  table.append(el("thead", {}, head), body);
  fill();
  return table;
}

async function overview(params) {
  const query = filterParams(params, ["since", "generation"]);
  const summary = await api("/diffs/summary" + (query.toString() ? "?" + query : ""));
  crumbs(el("span", { text: "Overview" }));
  syncFilters(params, summary.routes.map((r) => r.route));
  const live = summary.live || {};
  const linkParams = filterParams(params, ["since", "generation", "verdict"]);
  const columns = [
    { title: "Route", key: (r) => r.route, cell: (r) => el("a", { class: "route-link", href: href(["route", r.route], linkParams), text: r.route }) },
    { title: "Direction", key: (r) => r.direction, cell: (r) => r.direction },
    { title: "Stage", key: (r) => (live.stages || {})[r.route] || "", cell: (r) => [(live.stages || {})[r.route] || "–", r.stages.length && r.stages.join(",") !== (live.stages || {})[r.route] ? el("span", { class: "muted", text: ` (stored: ${r.stages.join(", ")})` }) : null] },
    { title: "Generations", key: (r) => Math.max(0, ...r.generations), cell: (r) => r.generations.join(", ") || "–" },
    { title: "Exchanges", num: true, key: (r) => r.exchanges, cell: (r) => r.exchanges },
    { title: "Mismatch rate", num: true, key: (r) => r.mismatch_rate, cell: (r) => el("span", { class: r.passed === false ? "fail" : "pass", text: percent(r.mismatch_rate) }) },
    { title: "Noise", num: true, key: (r) => r.noise_rate, cell: (r) => `${r.noise} (${percent(r.noise_rate)})` },
    { title: "Errors", num: true, key: (r) => r.shadow_errors, cell: (r) => r.shadow_errors },
    { title: "Trend", key: (r) => r.last_ms, cell: (r) => trendChart(r.trend) },
    { title: "Last", key: (r) => r.last_ms, cell: (r) => el("span", { class: "muted", text: time(r.last_ms) }) },
  ];
  const nodes = [el("h1", { text: "Routes and directions" })];
  if (!summary.routes.length) nodes.push(el("p", { class: "muted", text: "No compared exchanges stored yet (or none match the filters)." }));
  else nodes.push(sortableTable(columns, summary.routes, 5));
  nodes.push(el("p", { class: "muted", text: `Trend: ${summary.buckets} buckets of ${duration(summary.bucket_ms)} from ${time(summary.from_ms)}. Mismatch rate counts shadow errors; a route fails above ${percent(summary.max_diff_rate)}.` }));
  nodes.push(el("h2", { text: "Migration share (requests served since the proxy started)" }));
  const traffic = summary.traffic || [];
  if (!traffic.length) nodes.push(el("p", { class: "muted", text: "No requests counted yet." }));
  else {
    nodes.push(el("table", { id: "traffic-table" },
      el("thead", {}, el("tr", {}, el("th", { text: "Route" }), el("th", { text: "Legacy upstream" }), el("th", { class: "num", text: "Requests" }), el("th", { text: "Per upstream" }), el("th", { text: "On the new side" }))),
      el("tbody", {}, traffic.map((t) => el("tr", { "data-route": t.route },
        el("td", { text: t.route }),
        el("td", { text: t.legacy || "–" }),
        el("td", { class: "num", text: t.requests }),
        el("td", {}, Object.entries(t.upstreams).map(([name, count]) => el("span", { class: "badge", text: `${name}: ${count}` }))),
        el("td", {}, el("span", { class: "share" }, el("span", { class: "share-fill", "data-share": t.new_share.toFixed(3) })), " ", percent(t.new_share)),
      )))));
  }
  show(...nodes);
  // Widths are set from script: the CSP allows no inline style attribute in markup.
  for (const fill of view.querySelectorAll(".share-fill")) fill.style.width = (Number(fill.dataset.share) * 100).toFixed(1) + "%";
  document.getElementById("live").textContent = `generation ${live.generation ?? "?"} serving`;
}

// ---------------------------------------------------------------------------------------------
// A route: its differing paths ranked, suggestions, and its exchanges page by page.

function exchangeLink(id, text) {
  return id ? el("a", { class: "exchange-link", href: href(["exchange", String(id)]), text: text || `#${id}` }) : el("span", { class: "muted", text: text || "–" });
}

function pathsTable(paths, exampleIds, id) {
  return el("table", { id },
    el("thead", {}, el("tr", {},
      el("th", { text: "Section" }), el("th", { text: "Path" }), el("th", { text: "Kind" }),
      el("th", { class: "num", text: "Exchanges" }), el("th", { class: "num", text: "Share" }),
      el("th", { text: "Primary (example)" }), el("th", { text: "Candidate (example)" }), el("th", { text: "Example exchange" }))),
    el("tbody", {}, paths.map((p) => el("tr", { "data-path": p.path },
      el("td", { text: p.section }),
      el("td", {}, el("code", { text: p.path }), p.likely_noise ? el("div", { class: "muted", text: "likely noise: " + p.likely_noise }) : null),
      el("td", { text: p.kind }),
      el("td", { class: "num", text: p.exchanges }),
      el("td", { class: "num", text: percent(p.share) }),
      el("td", { class: "value mono", text: p.example.primary ?? "(absent)" }),
      el("td", { class: "value mono", text: p.example.candidate ?? "(absent)" }),
      el("td", {}, exchangeLink(exampleIds[p.example.request_id], p.example.request)),
    ))));
}

async function routeView(name, params) {
  const query = filterParams(params, ["since", "generation"]);
  query.set("route", name);
  const list = filterParams(params, ["since", "generation", "verdict", "before"]);
  list.set("route", name);
  list.set("limit", "25");
  const [summary, page] = await Promise.all([api("/diffs/summary?" + query), api("/diffs?" + list)]);
  crumbs(el("a", { href: href([], filterParams(params, ["since", "generation"])), text: "Overview" }), el("span", { text: name }));
  syncFilters(new URLSearchParams([...params, ["route", name]]), [name]);
  const nodes = [el("h1", {}, "Route ", el("code", { text: name }))];
  if (!summary.routes.length) nodes.push(el("p", { class: "muted", text: "Nothing stored for this route (with these filters)." }));
  for (const group of summary.routes) {
    nodes.push(el("h2", { class: "direction", text: group.direction }));
    nodes.push(el("p", {},
      `${group.exchanges} exchanges · `, el("span", { class: group.passed === false ? "fail" : "pass", text: `mismatch rate ${percent(group.mismatch_rate)}` }),
      ` · ${group.mismatches} mismatches · ${group.shadow_errors} candidate errors · ${group.noise} noise · generations ${group.generations.join(", ") || "–"} · stages ${group.stages.join(", ") || "–"}`,
      " ", trendChart(group.trend)));
    nodes.push(el("h3", { text: "Differing paths, most frequent first" }));
    if (group.paths.length) nodes.push(pathsTable(group.paths, group.example_ids || {}, "paths-table"));
    else nodes.push(el("p", { class: "muted", text: "No differing path above the listing threshold." }));
    if (group.hidden && group.hidden.paths) nodes.push(el("p", { class: "muted", text: `${group.hidden.paths} rarer paths not listed (strangler report --min-path-exchanges 1 lists all).` }));
    if (group.noisy_paths.length) {
      nodes.push(el("h3", { text: "Discounted as noise" }));
      nodes.push(pathsTable(group.noisy_paths, group.example_ids || {}, "noisy-paths-table"));
    }
    nodes.push(el("h3", { text: "Suggested ignore rules" }));
    if (group.suggestion) {
      nodes.push(el("pre", { class: "yaml", id: "suggestion", text: group.suggestion }));
      if (group.mismatches_with_suggestion !== null && group.mismatches_with_suggestion !== undefined)
        nodes.push(el("p", { class: "muted", text: `With them, ${group.mismatches_with_suggestion} of ${group.exchanges} exchanges would still mismatch.` }));
    } else nodes.push(el("p", { class: "muted", text: "None: nothing here looks like noise." }));
  }
  nodes.push(el("h2", { text: "Exchanges" + (params.get("verdict") ? ` (${params.get("verdict")})` : "") + ", newest first" }));
  nodes.push(exchangesTable(page.diffs));
  if (page.next_before) {
    const next = new URLSearchParams(params);
    next.set("before", page.next_before);
    nodes.push(el("p", { class: "pager" }, el("a", { id: "older-page", href: href(["route", name], next), text: "Older exchanges →" })));
  }
  show(...nodes);
}

function exchangesTable(diffs) {
  if (!diffs.length) return el("p", { class: "muted", text: "No exchanges on this page." });
  return el("table", { id: "exchanges-table" },
    el("thead", {}, el("tr", {}, ["Id", "Time", "Request", "Verdict", "Statuses", "Differences", "Generation"].map((t) => el("th", { text: t })))),
    el("tbody", {}, diffs.map((d) => el("tr", {},
      el("td", {}, exchangeLink(d.id)),
      el("td", { class: "muted", text: time(d.at_ms) }),
      el("td", {}, el("code", { text: `${d.method} ${d.path}${d.query ? "?" + d.query : ""}` })),
      el("td", {}, el("span", { class: "badge " + d.verdict, text: d.verdict })),
      el("td", { text: `${d.primary_status ?? "–"} / ${d.shadow_status ?? "–"}` }),
      el("td", {}, d.differences.slice(0, 4).map((x) => el("code", { class: "badge", text: x.path })), d.differences.length > 4 ? ` +${d.differences.length - 4}` : ""),
      el("td", { text: d.generation ?? "–" }),
    ))));
}

// ---------------------------------------------------------------------------------------------
// One exchange, side by side.

function differencesTable(list, id) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, ["Path", "Kind", "Primary", "Candidate"].map((t) => el("th", { text: t })))),
    el("tbody", {}, list.map((d) => el("tr", { "data-path": d.path },
      el("td", {}, el("code", { text: d.path })),
      el("td", { text: d.kind }),
      el("td", { class: "value mono primary-value", text: d.primary ?? "(absent)" }),
      el("td", { class: "value mono candidate-value", text: d.shadow ?? "(absent)" }),
    ))));
}

function jsonSide(lines, id) {
  return el("div", { class: "body", id }, lines.map((line) => el("div", {
    class: "line" + (line.mark ? " " + line.mark : ""),
    "data-path": line.path,
    title: line.path,
    text: line.text,
  })));
}

function hunksView(hunks) {
  const rows = [];
  for (const hunk of hunks) {
    rows.push(el("div", { class: "line hunk-header", text: hunk.header }));
    for (const line of hunk.lines) {
      rows.push(el("div", { class: "line" + (line.tag === "-" ? " del" : line.tag === "+" ? " add" : "") },
        el("span", { class: "no", text: line.primary_line ?? "" }),
        el("span", { class: "no", text: line.candidate_line ?? "" }),
        `${line.tag} ${line.text}`));
    }
  }
  return el("div", { class: "body", id: "text-diff" }, rows);
}

async function exchangeView(id) {
  const x = await api("/diffs/" + encodeURIComponent(id));
  crumbs(el("a", { href: "#/", text: "Overview" }), el("a", { href: href(["route", x.route]), text: x.route }), el("span", { text: `exchange #${x.id}` }));
  const nodes = [
    el("h1", {}, el("code", { id: "request-line", text: x.request_line })),
    el("p", {},
      el("span", { class: "badge " + x.verdict, id: "verdict", text: x.verdict }),
      ` route ${x.route} · ${x.primary_upstream ?? "?"} → ${x.candidate_upstream ?? "?"} · stage ${x.stage ?? "–"} · generation ${x.generation ?? "–"} · ${time(x.at_ms)} · request id `,
      el("code", { text: x.request_id })),
    el("div", { class: "links" },
      x.newer ? el("a", { id: "newer", href: href(["exchange", String(x.newer)]), text: "← newer differing exchange" }) : null,
      el("a", { href: href(["route", x.route]), text: "all of " + x.route }),
      x.older ? el("a", { id: "older", href: href(["exchange", String(x.older)]), text: "older differing exchange →" }) : null),
    el("div", { class: "sides" },
      el("div", { class: "side" }, el("h3", { text: `Primary (${x.primary_upstream ?? "primary"})` }), el("div", { class: "status", id: "primary-status", text: x.primary_status ?? "no answer" })),
      el("div", { class: "side" }, el("h3", { text: `Candidate (${x.candidate_upstream ?? "candidate"})` }), el("div", { class: "status", id: "candidate-status", text: x.shadow_status ?? "no answer" }))),
  ];
  nodes.push(el("h2", { text: "Differences" }));
  nodes.push(x.differences.length ? differencesTable(x.differences, "differences") : el("p", { class: "muted", text: "None counted." }));
  if (x.noise.length) {
    nodes.push(el("h3", { text: "Discounted as noise" }));
    nodes.push(differencesTable(x.noise, "noise"));
  }
  nodes.push(el("h2", { text: "Headers that differ" }));
  nodes.push(x.header_differences.length ? el("div", { class: "sides", id: "headers" },
    el("div", { class: "side" }, el("table", {}, el("tbody", {}, x.header_differences.map((h) => el("tr", {}, el("td", {}, el("code", { text: h.path.replace(/^headers\./, "") })), el("td", { class: "value mono", text: h.primary ?? "(absent)" })))))),
    el("div", { class: "side" }, el("table", {}, el("tbody", {}, x.header_differences.map((h) => el("tr", {}, el("td", {}, el("code", { text: h.path.replace(/^headers\./, "") })), el("td", { class: "value mono", text: h.shadow ?? "(absent)" }))))))) : el("p", { class: "muted", text: "None (other headers are not stored; sensitive ones never are)." }));
  nodes.push(el("h2", { text: "Bodies" }));
  if (x.body.kind === "json") {
    nodes.push(el("div", { class: "sides" },
      el("div", { class: "side" }, el("h3", { text: "Primary" }), jsonSide(x.body.primary, "primary-body")),
      el("div", { class: "side" }, el("h3", { text: "Candidate" }), jsonSide(x.body.candidate, "candidate-body"))));
  } else if (x.body.kind === "text") {
    nodes.push(x.body.identical ? el("p", { class: "muted", text: "The stored samples are the same." }) : hunksView(x.body.hunks));
  } else nodes.push(el("p", { class: "muted", text: "No body sample stored (a match, a candidate error or empty bodies)." }));
  show(...nodes);
}

// ---------------------------------------------------------------------------------------------

async function render() {
  const { parts, params } = parseHash();
  document.getElementById("forget-token").hidden = !token();
  try {
    if (parts[0] === "route" && parts[1]) await routeView(parts[1], params);
    else if (parts[0] === "exchange" && parts[1]) await exchangeView(parts[1]);
    else await overview(params);
    document.getElementById("token-form").hidden = true;
    document.body.dataset.loaded = location.hash || "#/";
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken(token() ? "That token was refused." : "");
      return;
    }
    show(el("p", { class: "error", id: "load-error", text: String(error.message || error) }));
    document.body.dataset.loaded = "error";
  }
}

window.addEventListener("hashchange", render);
render();
