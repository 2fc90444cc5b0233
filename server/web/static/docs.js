// Renders /openapi.json as a list of operations: plain DOM, no framework, nothing from another host.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function schemaBlock(schema) {
  return el("pre", {}, JSON.stringify(schema, null, 2));
}

function parametersTable(parameters) {
  if (!parameters || parameters.length === 0) return null;
  const rows = parameters.map((p) =>
    el("tr", {},
      el("td", {}, el("code", {}, p.name)),
      el("td", {}, p.in + (p.required ? ", required" : "")),
      el("td", {}, p.description || ""),
      el("td", {}, el("code", {}, JSON.stringify(p.schema || {}))),
    ),
  );
  return el("table", {}, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"), el("th", {}, "Description"), el("th", {}, "Schema")), ...rows);
}

function responsesTable(responses) {
  const rows = Object.entries(responses || {}).map(([status, response]) => {
    const content = response.content || {};
    const blocks = Object.entries(content).map(([type, media]) =>
      el("div", {}, el("code", {}, type), media.schema ? schemaBlock(media.schema) : null),
    );
    return el("tr", {}, el("td", { class: "status" }, status), el("td", {}, response.description || "", ...blocks));
  });
  return el("table", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Response")), ...rows);
}

function operation(path, method, op) {
  const security = (op.security || []).map((s) => Object.keys(s)[0] || "none").join(" or ");
  const body = op.requestBody
    ? el("div", {}, el("h4", {}, "Request body"), ...Object.entries(op.requestBody.content || {}).map(([type, media]) =>
        el("div", {}, el("code", {}, type), schemaBlock(media.schema || {}))))
    : null;
  const details = el("details", { class: "op", id: op.operationId },
    el("summary", {}, el("span", { class: "method " + method }, method), el("span", { class: "path" }, path), el("span", {}, op.summary || "")),
    el("div", { class: "body" },
      op.description ? el("p", {}, op.description) : null,
      security ? el("p", {}, "Credentials: ", el("code", {}, security)) : null,
      parametersTable(op.parameters),
      body,
      el("h4", {}, "Responses"),
      responsesTable(op.responses),
    ),
  );
  details.dataset.search = [path, method, (op.tags || []).join(" "), JSON.stringify(op.responses)].join(" ").toLowerCase();
  return details;
}

function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("description").textContent = doc.info.description || "";
  document.getElementById("openapi-version").textContent = doc.openapi;
  const main = document.getElementById("operations");
  main.replaceChildren();
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op));
    }
  }
  for (const [tag, ops] of byTag) {
    main.append(el("section", { class: "tag" }, el("h2", {}, tag), ...ops));
  }
  document.getElementById("filter").addEventListener("input", (event) => {
    const needle = event.target.value.trim().toLowerCase();
    for (const op of main.querySelectorAll("details.op")) op.hidden = needle !== "" && !op.dataset.search.includes(needle);
    for (const section of main.querySelectorAll("section.tag")) section.hidden = !section.querySelector("details.op:not([hidden])");
  });
  document.body.dataset.rendered = String(main.querySelectorAll("details.op").length);
}

fetch("/openapi.json")
  .then((response) => {
    if (!response.ok) throw new Error("GET /openapi.json answered " + response.status);
    return response.json();
  })
  .then(render)
  .catch((error) => {
    document.getElementById("status").textContent = String(error);
  });
