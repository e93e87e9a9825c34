// The jobs page: submits the form as JSON to POST /jobs and keeps the rows of
// jobs up to date from GET /jobs, without reloading the page; a few queued or
// running jobs follow their own event stream (GET <job>/events) as it happens.
"use strict";

// Jobs followed through their stream at once: a page holds few of the gateway's streams, below each owner's share
// (GATEWAY_MAX_STREAMS_PER_OWNER), so that a notebook's client of the same user still gets one. The other rows,
// and a row whose stream the gateway refused or lost, keep the polling of GET /jobs.
const MAX_STREAMS = 2;
const FINAL_STATUSES = new Set(["done", "failed", "cancelled"]);
// The open streams by row (owner and id), and the rows whose stream failed: polled from then on.
const streams = new Map();
const polledOnly = new Set();

function jobsUrl() {
  return document.body.dataset.jobsUrl;
}

// A job's own address on this page's host: its result's (http_url) path without "/result"; another owner's job
// is under /users/<owner>/.
function jobUrl(job) {
  return new URL(job.http_url).pathname.replace(/\/result$/, "");
}

function formatSeconds(seconds) {
  return seconds === null || seconds === undefined ? "" : `${seconds.toFixed(1)} s`;
}

// A thumbnail the gateway was too busy to draw (429 while many are drawn at once)
// is asked for again, a few times, each time later.
function retryWhenRefused(image) {
  let tries = 0;
  image.addEventListener("error", () => {
    tries += 1;
    if (tries > 5) return;
    const source = image.src;
    setTimeout(() => {
      image.removeAttribute("src");
      image.src = source;
    }, 2000 * tries);
  });
}

function showPreview(cell, job) {
  if (job.status !== "done") {
    cell.replaceChildren();
    return;
  }
  if (cell.querySelector("img")) return;
  const link = document.createElement("a");
  link.href = `${jobUrl(job)}/preview.png`;
  const image = document.createElement("img");
  image.src = `${link.href}?size=thumbnail`;
  image.alt = `preview of ${job.job_id}`;
  image.loading = "lazy";
  retryWhenRefused(image);
  link.append(image);
  cell.replaceChildren(link);
}

// Fills a row (server-rendered, or cloned from the page's template) from a job record.
function fillRow(row, job) {
  row.dataset.jobId = job.job_id;
  row.dataset.owner = job.owner || "";
  row.dataset.status = job.status;
  const record = row.querySelector("a.record");
  record.href = jobUrl(job);
  record.textContent = job.job_id;
  row.querySelector(".owner").textContent = job.owner ? `by ${job.owner}` : "";
  row.querySelector(".result-url").textContent = job.http_url;
  row.querySelector(".badge").textContent = job.status;
  row.querySelector(".error").textContent = job.error ? job.error.message : "";
  const progress = row.querySelector("progress");
  progress.max = job.progress.chunks_total;
  progress.value = job.progress.chunks_written;
  row.querySelector(".chunks").textContent = `${job.progress.chunks_written}/${job.progress.chunks_total}`;
  const duration = row.querySelector(".duration");
  duration.dataset.startedAt = job.started_at || "";
  duration.textContent = formatSeconds(job.seconds);
  const submitted = row.querySelector("time");
  submitted.dateTime = job.submitted_at;
  submitted.textContent = job.submitted_at.slice(0, 19).replace("T", " ");
  row.querySelector(".expires").textContent = job.expires_at ? `expires ${job.expires_at.slice(0, 19).replace("T", " ")}` : "";
  showPreview(row.querySelector(".preview"), job);
}

// Each owner's ids are their own: an admin's page may show alice's and bob's job of one id.
function rowOf(job) {
  const owner = CSS.escape(job.owner || "");
  return document.querySelector(`#jobs tbody tr[data-job-id="${CSS.escape(job.job_id)}"][data-owner="${owner}"]`);
}

// Updates the row of each listed job, adding rows for jobs not yet shown, newest on top.
function showJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  for (const job of [...jobs].reverse()) {
    let row = rowOf(job);
    if (!row) {
      row = document.querySelector("#job-row").content.firstElementChild.cloneNode(true);
      body.prepend(row);
    }
    fillRow(row, job);
  }
  document.querySelector("#no-jobs").hidden = body.rows.length > 0;
  followJobs();
}

function rowKey(row) {
  return JSON.stringify([row.dataset.owner, row.dataset.jobId]);
}

// Opens a stream for queued or running rows, newest first, while fewer than MAX_STREAMS are open.
function followJobs() {
  for (const row of document.querySelectorAll('#jobs tbody tr[data-status="queued"], #jobs tbody tr[data-status="running"]')) {
    if (streams.size >= MAX_STREAMS) return;
    const key = rowKey(row);
    if (!streams.has(key) && !polledOnly.has(key)) follow(row, key);
  }
}

// The row's job as the gateway pushes each change of it; the stream is closed after the final one. Its address is the
// row's own link (made by the gateway, under the prefix the page came by) and "/events".
function follow(row, key) {
  const source = new EventSource(`${row.querySelector("a.record").getAttribute("href")}/events`);
  streams.set(key, source);
  const stop = (failed) => {
    source.close();
    streams.delete(key);
    if (failed) polledOnly.add(key);
    followJobs();
  };
  source.addEventListener("job", (event) => {
    const job = JSON.parse(event.data);
    const shown = rowOf(job);
    if (shown) fillRow(shown, job);
    if (FINAL_STATUSES.has(job.status)) stop(false);
  });
  // A lost connection is tried again by the browser itself, resuming after the last event (Last-Event-ID); a stream
  // the gateway refused (a 429, a 404) is closed for good, and the row goes back to the polling.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) stop(true);
  });
}

// A running job's duration so far, counted from its start.
function tickRunningDurations() {
  for (const row of document.querySelectorAll('#jobs tbody tr[data-status="running"]')) {
    const cell = row.querySelector(".duration");
    if (cell.dataset.startedAt) {
      cell.textContent = formatSeconds(Math.max(0, Date.now() - Date.parse(cell.dataset.startedAt)) / 1000);
    }
  }
}

async function refresh() {
  const response = await fetch(`${jobsUrl()}?limit=${document.body.dataset.pageSize}`, {
    headers: { Accept: "application/json" },
  });
  if (response.ok) showJobs((await response.json()).jobs);
}

// The apps and their parameters' JSON Schemas, as the page was rendered with them.
function apps() {
  return JSON.parse(document.querySelector("#apps-data").textContent);
}

// The JSON types a property's schema allows, its branches (oneOf, anyOf) included.
function types(schema) {
  const declared = [].concat(schema.type ?? []);
  return [...declared, ...[...(schema.oneOf ?? []), ...(schema.anyOf ?? [])].flatMap(types)];
}

// A field for each parameter of the chosen app, from its schema: a list for an
// enum, text otherwise, with the schema's default as placeholder and its description as title.
function showParameters() {
  const app = apps().find((candidate) => candidate.name === document.querySelector("#submit-job select[name=app]").value);
  const fieldset = document.querySelector("#parameters");
  fieldset.replaceChildren();
  for (const [name, schema] of Object.entries(app.parameters.properties ?? {})) {
    const label = document.createElement("label");
    label.append(name);
    let field;
    if (schema.enum) {
      field = document.createElement("select");
      for (const choice of schema.enum) field.append(new Option(choice, choice, choice === schema.default, choice === schema.default));
    } else {
      field = document.createElement("input");
      field.placeholder = schema.default !== undefined ? String(schema.default) : types(schema).includes("null") ? "chosen by the gateway" : "";
      if (types(schema).includes("array")) field.title = "rows,columns";
      // As an HTML pattern: anchored by HTML itself, compiled with the v flag, under which a "-" ending a class is escaped.
      if (schema.pattern) field.pattern = schema.pattern.replace(/^\^/, "").replace(/\$$/, "").replaceAll("-]", "\\-]");
    }
    field.name = name;
    field.required = (app.parameters.required ?? []).includes(name);
    if (schema.description) label.title = schema.description;
    label.append(field);
    fieldset.append(label);
  }
}

// The schema of a list's items, its branches (oneOf, anyOf) included.
function items(schema) {
  return [schema, ...(schema.oneOf ?? []), ...(schema.anyOf ?? [])].find((branch) => types(branch).includes("array") && branch.items)?.items ?? {};
}

// A field's text as JSON text, read as its schema asks: a number as typed (digits
// past what a JavaScript number holds exactly stay exact), "a,b" a list, anything else text.
function jsonValue(text, schema) {
  const allowed = types(schema);
  if (allowed.includes("integer") && /^-?[0-9]+$/.test(text)) return text;
  if (allowed.includes("number") && /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/.test(text)) return text;
  if (allowed.includes("array") && text.includes(",")) return `[${text.split(",").map((item) => jsonValue(item.trim(), items(schema))).join(",")}]`;
  return JSON.stringify(text);
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const fields = new FormData(form);
  const app = apps().find((candidate) => candidate.name === fields.get("app"));
  const parameters = Object.entries(app.parameters.properties ?? {})
    .filter(([name]) => fields.get(name)?.trim())
    .map(([name, schema]) => `${JSON.stringify(name)}:${jsonValue(fields.get(name).trim(), schema)}`);
  const jobId = fields.get("job_id") ? `,"job_id":${JSON.stringify(fields.get("job_id"))}` : "";
  const body = `{"app":${JSON.stringify(app.name)}${jobId},"parameters":{${parameters.join(",")}}}`;
  const result = document.querySelector("#submit-result");
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const response = await fetch(jobsUrl(), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body,
    });
    const answer = await response.json();
    if (response.ok) {
      showJobs([answer]);
      result.className = "";
      result.textContent = `Job ${answer.job_id} is ${answer.status}; its result will be at ${answer.http_url}`;
    } else {
      result.className = "failed";
      result.textContent = `Not submitted: ${answer.error.message}`;
    }
  } catch (error) {
    result.className = "failed";
    result.textContent = `Not submitted: the gateway did not answer (${error.message})`;
  } finally {
    button.disabled = false;
  }
}

async function refreshForever() {
  const seconds = Number(document.body.dataset.refreshSeconds);
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    if (document.hidden) continue; // nobody is looking
    try {
      await refresh();
    } catch (error) {
      console.warn("refreshing the jobs failed; trying again", error);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelector("#submit-job").addEventListener("submit", submitJob);
  document.querySelector("#submit-job select[name=app]").addEventListener("change", showParameters);
  showParameters();
  for (const image of document.querySelectorAll("#jobs td.preview img")) retryWhenRefused(image);
  followJobs();
  setInterval(tickRunningDurations, 250);
  refreshForever();
});
