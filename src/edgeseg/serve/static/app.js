// edgeseg serve: live curves, log tail and state on the job page; params/MACs on the model form.
"use strict";

function drawChart(canvas, points, color, logScale) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 40;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#999"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(pad, 10); ctx.lineTo(pad, h - 25); ctx.lineTo(w - 10, h - 25); ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  const data = points.filter(p => p[1] !== null && isFinite(p[1]) && (!logScale || p[1] > 0));
  if (!data.length) { ctx.fillText("no points yet", pad + 10, h / 2); return; }
  const f = v => logScale ? Math.log10(v) : v;
  const xs = data.map(p => p[0]), ys = data.map(p => f(p[1]));
  let x0 = Math.min(...xs, 0), x1 = Math.max(...xs, 1), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-12) { y0 -= 0.5 * (Math.abs(y0) || 1); y1 += 0.5 * (Math.abs(y1) || 1); }
  const X = x => pad + (x - x0) / (x1 - x0) * (w - pad - 15), Y = y => h - 25 - (y - y0) / (y1 - y0) * (h - 40);
  const label = v => logScale ? Math.pow(10, v).toExponential(1) : v.toPrecision(3);
  ctx.fillText(label(y1), 2, 14); ctx.fillText(label(y0), 2, h - 28);
  ctx.fillText("epoch " + x1, w - 60, h - 8); ctx.fillText(String(x0), pad, h - 8);
  ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
  data.forEach((p, i) => { const x = X(p[0]), y = Y(f(p[1])); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
  ctx.fillStyle = color;
  data.forEach(p => { ctx.beginPath(); ctx.arc(X(p[0]), Y(f(p[1])), 3, 0, 7); ctx.fill(); });
}

function fmt(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }

function showJob(data) {
  const job = data.job, rows = data.metrics;
  const state = document.getElementById("job-state");
  state.textContent = job.state; state.className = "state " + job.state;
  document.getElementById("job-message").textContent = job.message || "";
  document.getElementById("abort").disabled = !["queued", "running"].includes(job.state);
  document.getElementById("resume").disabled = !["aborted", "failed"].includes(job.state);
  document.getElementById("delete").disabled = job.state === "running";
  const log = document.getElementById("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 5;
  log.textContent = data.log;
  if (atEnd) log.scrollTop = log.scrollHeight;
  if (document.getElementById("chart-loss")) {
    const at = key => rows.map(r => [r.epoch, r[key]]);
    drawChart(document.getElementById("chart-loss"), at("train_loss"), "#c0392b", false);
    drawChart(document.getElementById("chart-lr"), at("lr"), "#8e44ad", true);
    drawChart(document.getElementById("chart-miou"), at("val_miou"), "#27ae60", false);
    const body = document.querySelector("#epochs tbody");
    body.innerHTML = "";
    rows.forEach(r => {
      const tr = document.createElement("tr");
      [r.epoch, fmt(r.train_loss, 4), r.lr === null ? "-" : Number(r.lr).toExponential(2), fmt(r.val_miou, 4),
       fmt(r.val_pixel_acc, 4), fmt(r.epoch_seconds, 1)].forEach(v => {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
      body.appendChild(tr);
    });
  }
  return ["queued", "running"].includes(job.state);
}

async function pollJob(element) {
  let active = true, wasActive = null;
  while (true) {
    try {
      const response = await fetch("/api/jobs/" + element.dataset.job + "?lines=80");
      if (response.ok) {
        active = showJob(await response.json());
        // an export or recipe that finishes: reload to show its download or report
        if (wasActive && !active && element.dataset.kind !== "train") { location.reload(); return; }
        wasActive = active;
      }
    } catch (e) { /* the server restarts: keep polling */ }
    await new Promise(r => setTimeout(r, active ? 1500 : 5000));
  }
}

async function pollDoctor(element) {
  while (true) {
    await new Promise(r => setTimeout(r, 1500));
    try {
      const data = await (await fetch(element.dataset.poll)).json();
      if (!["queued", "running"].includes(data.job.state)) { location.reload(); return; }
    } catch (e) { }
  }
}

async function showProfile() {
  const select = document.getElementById("architecture"), out = document.getElementById("arch-profile");
  const crop = (document.getElementById("crop").value.match(/\d+/g) || [192, 256]).map(Number);
  try {
    const p = await (await fetch(`/api/architectures/${encodeURIComponent(select.value)}?height=${crop[0]}&width=${crop[1] || crop[0]}`)).json();
    out.textContent = p.error ? p.error : `${(p.params / 1e6).toFixed(3)} M params, ${(p.macs / 1e9).toFixed(3)} GMACs at ${p.input_size.join("x")} (${p.num_classes} classes)`;
  } catch (e) { out.textContent = ""; }
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job");
  if (job) pollJob(job);
  const doctor = document.getElementById("doctor-state");
  if (doctor) pollDoctor(doctor);
  const arch = document.getElementById("architecture");
  if (arch) { arch.addEventListener("change", showProfile); document.getElementById("crop").addEventListener("change", showProfile); showProfile(); }
});
