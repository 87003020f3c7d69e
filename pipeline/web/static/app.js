// lungseg viewer: upload one radiograph, show the overlay, the areas and the QA flags.
"use strict";

const $ = (id) => document.getElementById(id);
let maxUploadBytes = 64 * 1024 * 1024;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function formatArea(mm2, px) {
  if (mm2 === null) return "— (no pixel spacing)";
  return `${(mm2 / 100).toFixed(1)} cm² (${Math.round(mm2).toLocaleString()} mm²)`;
}

function fillAreas(areas) {
  for (const side of ["right", "left", "total"]) {
    $(`area-${side}`).textContent = formatArea(areas[`${side}_mm2`], areas[`${side}_px`]);
    $(`px-${side}`).textContent = areas[`${side}_px`].toLocaleString();
  }
}

function fillFlags(flags) {
  const list = $("flags");
  list.replaceChildren();
  if (flags.length === 0) {
    const item = document.createElement("li");
    item.className = "ok";
    item.textContent = "No QA flag raised";
    list.append(item);
  }
  for (const f of flags) {
    const item = document.createElement("li");
    item.className = "flag";
    item.dataset.flag = f.flag;
    item.textContent = `${f.flag}: ${f.message}`;
    list.append(item);
  }
}

function downloadName(fileName, suffix) {
  const stem = fileName.replace(/\.[^.]*$/, "") || "radiograph";
  return `${stem}_${suffix}`;
}

function showResult(result, fileName) {
  $("file-name").textContent = fileName;
  fillAreas(result.areas);
  fillFlags(result.qa_flags);
  const spacing = result.pixel_spacing_mm;
  $("spacing").textContent = spacing
    ? `Pixel spacing ${spacing[0]} × ${spacing[1]} mm (${result.pixel_spacing_source}).`
    : "The image gives no pixel spacing: areas in pixels only.";
  $("input-format").textContent = result.input_format;
  $("image-size").textContent = `${result.columns} × ${result.rows} px`;
  $("confidence").textContent = result.mean_confidence.toFixed(3);
  $("seconds").textContent = `${result.seconds.toFixed(2)} s`;
  $("model").textContent = `${result.model.name} ${result.model.version}`;
  $("download-mask").href = result.links.mask;
  $("download-mask").download = downloadName(fileName, "lungmask.png");
  const seg = $("download-seg");
  seg.hidden = !result.links.seg;
  if (result.links.seg) {
    seg.href = result.links.seg;
    seg.download = downloadName(fileName, "lungseg.dcm");
  }
  const minutes = Math.round(result.expires_in_seconds / 60);
  $("expiry").textContent = `Downloads are available for ${minutes} minutes.`;
  $("overlay").src = result.links.overlay;
  $("image").src = result.links.image;
  $("result").hidden = false;
}

async function upload(file) {
  $("error").hidden = true;
  if (file.size > maxUploadBytes) {
    showError(`${file.name}: the file is larger than the limit of ${maxUploadBytes / 1048576} MB`);
    return;
  }
  $("status").textContent = `Segmenting ${file.name}…`;
  document.body.classList.add("busy");
  const body = new FormData();
  body.append("file", file);
  try {
    const response = await fetch("/api/segment", { method: "POST", body });
    const payload = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      showError(payload.detail || `the server answered ${response.status}`);
      return;
    }
    showResult(payload, file.name);
    $("status").textContent = `Segmented ${file.name}.`;
  } catch (err) {
    showError(`The server could not be reached: ${err.message}`);
  } finally {
    document.body.classList.remove("busy");
  }
}

function applyOverlay() {
  const opacity = Number($("opacity").value) / 100;
  $("overlay").style.opacity = $("overlay-toggle").checked ? String(opacity) : "0";
  $("opacity-value").textContent = `${$("opacity").value}%`;
}

function wire() {
  const zone = $("dropzone");
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) upload(e.target.files[0]);
    e.target.value = "";
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", applyOverlay);
  $("overlay-toggle").addEventListener("change", applyOverlay);
  applyOverlay();
  fetch("/healthz")
    .then((r) => r.json())
    .then((h) => {
      maxUploadBytes = h.max_upload_bytes;
      $("max-size").textContent = String(Math.round(h.max_upload_bytes / 1048576));
    })
    .catch(() => {});
}

document.addEventListener("DOMContentLoaded", wire);
