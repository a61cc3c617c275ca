// Send the chosen image to /classify and /search and draw the answers; "Add" puts it into the index, with the
// id and metadata typed beside it (the file's name and none by default). Where the service needs an API key, the page asks for it once (kept for this tab in
// sessionStorage) and sends it with every request, images included.
const $ = (id) => document.getElementById(id);
let lastFile = null;

async function request(route, options = {}) {
  const key = sessionStorage.getItem("apiKey");
  const response = await fetch(route, { ...options, headers: key ? { "X-API-Key": key } : {} });
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new Error(key ? "the API key was refused: enter the right one above"
                        : "this service needs an API key: enter it above");
  }
  return response;
}

async function post(route, file, fields = {}) {
  const form = new FormData();
  form.append("images", file);
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  const response = await request(route, { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

// A badge where the image is far from every training image the model keeps: its answer is less to be trusted.
function showFamiliarity(classification) {
  const unlike = classification.unlike_training_data === true;
  $("unlike").hidden = !unlike;
  if (unlike) {
    $("unlike").title = `distance from the training images ${classification.training_distance.toFixed(1)}, `
      + "beyond the threshold the model was exported with";
  }
}

function showPredictions(predictions) {
  $("predictions").replaceChildren(...predictions.map((p) => {
    const item = document.createElement("li");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p.probability).toFixed(1)}%`;
    item.append(p.class_name, bar, `${(100 * p.probability).toFixed(1)}%`);
    return item;
  }));
}

function showNeighbours(neighbours) {
  $("grid").replaceChildren(...neighbours.map((n) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = n.metadata.class || n.id;
    // fetched, not linked: an <img src> could not carry the API key
    request(n.image_url).then((r) => r.blob()).then((blob) => { img.src = URL.createObjectURL(blob); });
    const caption = document.createElement("figcaption");
    caption.textContent = `${n.metadata.class || n.id} ${n.score.toFixed(2)}`;
    figure.append(img, caption);
    return figure;
  }));
}

function showError(error) {
  $("error").textContent = error.message;
  $("error").hidden = false;
}

// Relative URLs: behind a reverse proxy with a path prefix (--root-path) they stay under it.
const search = (file) => post("search?k=12", file).then((r) => showNeighbours(r.results[0].neighbours));

async function analyse(file) {
  lastFile = file;
  $("error").hidden = true;
  $("added").textContent = "";
  $("add-error").hidden = true;
  $("preview").src = URL.createObjectURL(file);
  $("unlike").hidden = true;
  const jobs = [post("classify", file).then((r) => {
    showPredictions(r.classifications[0].predictions);
    showFamiliarity(r.classifications[0]);
  }), search(file)];
  for (const result of await Promise.allSettled(jobs)) {
    if (result.status === "rejected") showError(result.reason);
  }
  $("indexing").hidden = false;
}

// The metadata field as the API's JSON object: a JSON object is sent as typed (the service says what is wrong
// with it), comma-separated key=value pairs become one of strings (search filters match "3" and 3 alike).
function metadataJSON(text) {
  text = text.trim();
  if (!text || text.startsWith("{")) return text;
  const metadata = {};
  for (const pair of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const equals = pair.indexOf("=");
    if (equals < 1) throw new Error(`metadata: "${pair}" is not key=value (or give a JSON object)`);
    metadata[pair.slice(0, equals).trim()] = pair.slice(equals + 1).trim();
  }
  return JSON.stringify(metadata);
}

// Its errors stay beside the form: the page's own error line may still hold the image's classification error.
async function addToIndex(event) {
  event.preventDefault();
  $("added").textContent = "";
  $("add-error").hidden = true;
  $("add").disabled = true;  // one addition at a time: a double click would send the image twice
  try {
    const fields = {};
    const id = $("add-id").value.trim();
    const metadata = metadataJSON($("add-metadata").value);
    if (id) fields.ids = id;
    if (metadata) fields.metadata = metadata;
    const change = await post("index/images", lastFile, fields);
    $("added").textContent = `${change.replaced ? "replaced" : "added"} as ${change.ids[0]}; `
      + `${change.count} images indexed`;
    $("add-id").value = "";  // so that the next image does not replace this one by accident
    await search(lastFile);
  } catch (error) {
    $("add-error").textContent = error.message;
    $("add-error").hidden = false;
  } finally {
    $("add").disabled = false;
  }
}

// The model's name, what its evaluation measured and what its training took; the machines on hover.
function showModel() {
  request("version").then((r) => r.ok && r.json()).then((v) => {
    if (!v) return;
    const facts = [v.model];
    if (v.evaluation) {
      facts.push(`${v.evaluation.protocol} top-1 ${(100 * v.evaluation.top1).toFixed(1)}% on ${v.evaluation.data}`);
    }
    if (v.training.hours !== null) facts.push(`trained ${v.training.checkpoint_epoch} epochs in ${v.training.hours} h`);
    $("model").textContent = facts.join(" · ");
    $("model").title = v.training.machines.join("\n");
  }).catch(() => {});
}

$("indexing").addEventListener("submit", addToIndex);
$("file").addEventListener("change", (e) => e.target.files[0] && analyse(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) analyse(e.dataTransfer.files[0]);
});
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("apiKey", $("key").value);
  $("key-form").hidden = true;
  showModel();
  if (lastFile) analyse(lastFile);
});
showModel();
