// Send the chosen image to /classify and /search and draw the answers; "Add" puts it into the index (its file
// name as its id). Where the service needs an API key, the page asks for it once (kept for this tab in
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

async function post(route, file) {
  const form = new FormData();
  form.append("images", file);
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

async function addToIndex() {
  try {
    const change = await post("index/images", lastFile);
    $("added").textContent = `${change.replaced ? "replaced" : "added"} as ${change.ids[0]}; `
      + `${change.count} images indexed`;
    await search(lastFile);
  } catch (error) {
    showError(error);
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

$("add").addEventListener("click", addToIndex);
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
