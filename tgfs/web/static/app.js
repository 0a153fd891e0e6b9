// The tgfs library page. A plain ES module, no build step. Everything comes from the mount
// through the web server (examples/nginx.conf): /.tgfs/library.json (the videos),
// /.tgfs/status.json (jobs, store, cache), WebDAV PROPFIND (a folder's entries); changes
// go back as WebDAV PUT, MKCOL, MOVE and DELETE, with the site's password (basic auth,
// asked once per tab). The mount stays the one source of truth: nothing is kept here but
// the password (sessionStorage) and where each video was left (localStorage).

const ROOT = new URL("../../", location.href); // the page is /.tgfs/web/index.html
const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const RESUME_EVERY_S = 5;

// For tests and the curious: what the player went through.
window.tgfs = { errors: [], hls: null, ready: false };

// ---- paths and requests ------------------------------------------------------------------

function href(path, folder = false) {
  const encoded = path.split("/").filter(Boolean).map(encodeURIComponent).join("/");
  return new URL(encoded + (folder && encoded ? "/" : ""), ROOT);
}

function join(folder, name) {
  return folder ? `${folder}/${name}` : name;
}

function parentOf(path) {
  return path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
}

async function control(name) {
  const response = await fetch(new URL(`.tgfs/${name}`, ROOT), { cache: "no-store" });
  if (!response.ok) throw new Error(`${name}: ${response.status}`);
  return response.json();
}

function authorization() {
  return sessionStorage.getItem("tgfs-auth");
}

function askPassword() {
  return new Promise((resolve) => {
    const dialog = $("login");
    dialog.returnValue = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "ok") {
        const token = btoa(unescape(encodeURIComponent(`${$("user").value}:${$("password").value}`)));
        sessionStorage.setItem("tgfs-auth", `Basic ${token}`);
        resolve(true);
      } else {
        resolve(false);
      }
    };
    dialog.showModal();
  });
}

// The password, asked for before the first change of this tab: a request that meets the
// server's 401 first would make the browser show its own sign-in window instead.
async function signedIn() {
  return Boolean(authorization()) || (await askPassword());
}

// A change to the library, with the password (asked for again if the server refuses it).
async function change(method, url, headers = {}) {
  if (!(await signedIn())) throw new Error("changing the library needs the site's password");
  for (let attempt = 0; attempt < 2; attempt++) {
    const auth = authorization();
    const response = await fetch(url, {
      method,
      headers: auth ? { ...headers, Authorization: auth } : headers,
    });
    if (response.status !== 401) return response;
    sessionStorage.removeItem("tgfs-auth");
    if (!(await askPassword())) return response;
  }
  throw new Error(`${method} ${url.pathname}: the password was not accepted`);
}

// ---- the folder's entries ----------------------------------------------------------------

async function entries(folder) {
  const response = await fetch(href(folder, true), { method: "PROPFIND", headers: { Depth: "1" } });
  if (!response.ok) throw new Error(`listing ${folder || "/"}: ${response.status}`);
  const xml = new DOMParser().parseFromString(await response.text(), "application/xml");
  const here = href(folder, true).pathname;
  const out = [];
  for (const item of xml.getElementsByTagNameNS("DAV:", "response")) {
    const path = new URL(item.getElementsByTagNameNS("DAV:", "href")[0].textContent, ROOT).pathname;
    if (path === here) continue;
    const name = decodeURIComponent(path.replace(/\/$/, "").split("/").pop());
    if (name.startsWith(".")) continue; // the control folder, hidden files
    const dir = item.getElementsByTagNameNS("DAV:", "collection").length > 0;
    const length = item.getElementsByTagNameNS("DAV:", "getcontentlength")[0];
    out.push({ name, dir, size: length ? Number(length.textContent) : 0 });
  }
  return out.sort((a, b) => Number(b.dir) - Number(a.dir) || a.name.localeCompare(b.name));
}

// ---- formatting ----------------------------------------------------------------------------

function duration(seconds) {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

function size(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1000 && i < units.length - 1) {
    bytes /= 1000;
    i++;
  }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ---- the library -----------------------------------------------------------------------------

let current = "";
let refreshTimer = null;

function crumbs(folder) {
  const nav = $("crumbs");
  nav.replaceChildren(element("a", { href: "#/" }, "Library"));
  let path = "";
  for (const part of folder.split("/").filter(Boolean)) {
    path = join(path, part);
    nav.append(" / ", element("a", { href: `#/folder/${encodeURIComponent(path)}` }, part));
  }
}

function videoTile(video) {
  const poster = video.poster
    ? element("img", { src: href(video.poster).href, alt: "", loading: "lazy" })
    : element("div", { class: "no-poster" }, "▶");
  const ready = video.state === "ready";
  const label = ready
    ? duration(video.duration)
    : `processing${video.percent !== null ? ` ${Math.floor(video.percent)} %` : ""}`;
  const tile = element(
    "li",
    { class: "tile video", "data-path": video.path },
    element(
      "a",
      { href: `#/play/${encodeURIComponent(video.path)}`, class: "cover" },
      poster,
      element("span", { class: ready ? "badge" : "badge busy" }, label),
    ),
    element("span", { class: "name" }, video.title),
    actions(video.path, true),
  );
  return tile;
}

function folderTile(path, name) {
  return element(
    "li",
    { class: "tile folder", "data-path": path },
    element("a", { href: `#/folder/${encodeURIComponent(path)}`, class: "cover" }, element("div", { class: "folder-icon" }, "📁")),
    element("span", { class: "name" }, name),
    actions(path, true),
  );
}

function fileTile(path, entry) {
  return element(
    "li",
    { class: "tile file", "data-path": path },
    element("a", { href: href(path).href, class: "cover", download: entry.name }, element("div", { class: "file-icon" }, "📄")),
    element("span", { class: "name" }, entry.name),
    element("span", { class: "muted" }, size(entry.size)),
    actions(path, false),
  );
}

function actions(path, folder) {
  return element(
    "span",
    { class: "actions" },
    element("button", { type: "button", class: "rename", title: "Rename or move", onclick: () => rename(path, folder) }, "Rename"),
    element("button", { type: "button", class: "delete", title: "Delete", onclick: () => remove(path, folder) }, "Delete"),
  );
}

async function showLibrary(folder) {
  current = folder;
  crumbs(folder);
  const query = $("search").value.trim().toLowerCase();
  const [library, listed] = await Promise.all([
    control("library.json"),
    query ? Promise.resolve([]) : entries(folder),
  ]);
  const videos = new Map(library.videos.map((v) => [v.path, v]));
  const grid = $("grid");
  const tiles = [];
  if (query) {
    for (const video of library.videos) {
      if (video.title.toLowerCase().includes(query) || video.path.toLowerCase().includes(query)) {
        tiles.push(videoTile(video));
      }
    }
  } else {
    for (const entry of listed) {
      const path = join(folder, entry.name);
      if (entry.dir && videos.has(path)) tiles.push(videoTile(videos.get(path)));
      else if (entry.dir) tiles.push(folderTile(path, entry.name));
      else tiles.push(fileTile(path, entry));
    }
  }
  grid.replaceChildren(...tiles);
  $("empty").hidden = tiles.length > 0;
  window.tgfs.ready = true;
  // Videos still being made: look again until they are ready.
  clearTimeout(refreshTimer);
  if (library.videos.some((v) => v.state !== "ready")) {
    refreshTimer = setTimeout(() => route(), POLL_MS);
  }
}

async function newFolder() {
  const name = prompt("New folder's name");
  if (!name) return;
  const response = await change("MKCOL", href(join(current, name), true));
  if (!response.ok) alert(`Could not make the folder: ${response.status}`);
  route();
}

async function rename(path, folder) {
  const target = prompt("New name, or a path from the library's top to move it", path);
  if (!target || target === path) return;
  const destination = href(target.includes("/") ? target : join(parentOf(path), target), folder);
  const response = await change("MOVE", href(path, folder), { Destination: destination.href, Overwrite: "F" });
  if (!response.ok) alert(`Could not rename: ${response.status}`);
  route();
}

async function remove(path, folder) {
  if (!confirm(`Delete ${path}? It stays in the trash for a while (tgfs undelete).`)) return;
  const response = await change("DELETE", href(path, folder));
  if (!response.ok) alert(`Could not delete: ${response.status}`);
  route();
}

// ---- uploads ---------------------------------------------------------------------------------

function upload(file) {
  const folder = current;
  const path = join(folder, file.name);
  const bar = element("progress", { max: "100", value: "0" });
  const text = element("span", { class: "muted" }, "starting");
  const row = element("li", { class: "upload", "data-path": path }, element("span", { class: "name" }, file.name), bar, text);
  $("uploads").append(row);
  const started = performance.now();

  const send = () =>
    new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("PUT", href(path));
      const auth = authorization();
      if (auth) request.setRequestHeader("Authorization", auth);
      request.upload.onprogress = (event) => {
        if (!event.lengthComputable) return;
        bar.value = (100 * event.loaded) / event.total;
        const seconds = (performance.now() - started) / 1000;
        text.textContent = `${Math.floor(bar.value)} % · ${size(event.loaded / Math.max(seconds, 0.001))}/s`;
      };
      request.onload = () => resolve(request.status);
      request.onerror = () => resolve(0);
      request.send(file);
    });

  (async () => {
    if (!(await signedIn())) {
      row.classList.add("failed");
      text.textContent = "not uploaded: the site's password is needed";
      return;
    }
    let status = await send();
    if (status === 401 && (await askPassword())) status = await send();
    if (status < 200 || status >= 300) {
      row.classList.add("failed");
      text.textContent = `failed (${status || "network error"})`;
      return;
    }
    bar.value = 100;
    text.textContent = "uploaded; processing";
    row.classList.add("processing");
    await followJob(path, bar, text, row);
  })();
}

// The upload's ingest job, from status.json, until it is done; then its video, if it
// became one, from library.json until it is ready.
async function followJob(path, bar, text, row) {
  const stem = path.replace(/\.[^/.]+$/, "");
  for (;;) {
    const status = await control("status.json");
    const job = status.jobs.find((j) => j.path === path);
    if (job && job.state === "done") {
      if (job.outcome && job.outcome.startsWith("video")) break;
      text.textContent = job.error ? `kept as a file: ${job.error}` : "stored";
      row.classList.replace("processing", "done");
      route();
      return;
    }
    if (job && job.state === "failed") {
      text.textContent = `failed: ${job.error || "see status"}`;
      row.classList.replace("processing", "failed");
      return;
    }
    if (job) {
      bar.value = job.percent ?? 0;
      text.textContent = `processing: ${job.stage}${job.percent != null ? ` ${Math.floor(job.percent)} %` : ""}`;
      // Its folder appears in the grid as soon as the first segments are stored (and can
      // be played from then on): list the folder on view again until the tile is there,
      // after which the grid's own refresh follows it.
      const tile = `.tile.video[data-path="${CSS.escape(stem)}"]`;
      if (!$("library-view").hidden && current === parentOf(path) && !document.querySelector(tile)) {
        route();
      }
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  text.textContent = "ready";
  row.classList.replace("processing", "done");
  const link = element("a", { href: `#/play/${encodeURIComponent(stem)}` }, "play");
  row.append(" ", link);
  route();
}

// ---- the player ------------------------------------------------------------------------------

function fillMenu(select, items, chosen, onchange) {
  select.replaceChildren(...items.map(([value, label]) => element("option", { value: String(value) }, label)));
  select.value = String(chosen);
  select.onchange = () => onchange(Number(select.value));
}

async function showPlayer(path) {
  $("title").textContent = path.split("/").pop();
  crumbs(parentOf(path));
  const video = $("video");
  const source = href(`${path}/master.m3u8`).href;
  const key = `tgfs:position:${path}`;
  const resume = Number(localStorage.getItem(key) || 0);
  let saved = 0;
  video.ontimeupdate = () => {
    if (Math.abs(video.currentTime - saved) >= RESUME_EVERY_S) {
      saved = video.currentTime;
      localStorage.setItem(key, String(saved));
    }
  };
  video.onended = () => localStorage.removeItem(key);
  // Not in the last moments (the end credits of a film, the last 5 % of a clip): from the start.
  const startAt = () => {
    const tail = video.duration ? Math.min(10, video.duration * 0.05) : 0;
    if (resume > 0 && (!video.duration || resume < video.duration - tail)) video.currentTime = resume;
  };

  if (window.Hls && Hls.isSupported()) {
    const hls = new Hls();
    window.tgfs.hls = hls;
    hls.on(Hls.Events.ERROR, (_, data) => {
      window.tgfs.errors.push(`${data.type}: ${data.details}${data.fatal ? " (fatal)" : ""}`);
      if (data.fatal) {
        $("player-error").hidden = false;
        $("player-error").textContent = `Playback failed: ${data.details}`;
      }
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      fillMenu(
        $("quality"),
        [[-1, "Auto"], ...hls.levels.map((l, i) => [i, l.height ? `${l.height}p` : `level ${i}`])],
        -1,
        (i) => (hls.currentLevel = i),
      );
      startAt();
    });
    hls.on(Hls.Events.AUDIO_TRACKS_UPDATED, () => {
      fillMenu(
        $("audio"),
        hls.audioTracks.map((t, i) => [i, t.name || t.lang || `track ${i + 1}`]),
        hls.audioTrack,
        (i) => (hls.audioTrack = i),
      );
    });
    hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, () => {
      fillMenu(
        $("subtitles"),
        [[-1, "Off"], ...hls.subtitleTracks.map((t, i) => [i, t.name || t.lang || `track ${i + 1}`])],
        hls.subtitleTrack,
        (i) => {
          hls.subtitleTrack = i;
          hls.subtitleDisplay = i >= 0;
        },
      );
    });
    hls.loadSource(source);
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = source; // Safari plays HLS itself (its own menus)
    video.onloadedmetadata = startAt;
  } else {
    $("player-error").hidden = false;
    $("player-error").textContent = "This browser cannot play HLS.";
  }
  window.tgfs.ready = true;
}

function stopPlayer() {
  if (window.tgfs.hls) {
    window.tgfs.hls.destroy();
    window.tgfs.hls = null;
  }
  const video = $("video");
  video.removeAttribute("src");
  video.load();
}

// ---- status ----------------------------------------------------------------------------------

function table(headings, rows) {
  return element(
    "table",
    {},
    element("thead", {}, element("tr", {}, ...headings.map((h) => element("th", {}, h)))),
    element("tbody", {}, ...rows.map((r) => element("tr", {}, ...r.map((c) => element("td", {}, String(c ?? "")))))),
  );
}

async function showStatus() {
  crumbs("");
  const status = await control("status.json");
  const store = status.store || {};
  const cache = status.cache || {};
  const jobs = status.jobs.map((j) => [
    j.path,
    j.state,
    j.stage,
    j.percent != null ? `${Math.floor(j.percent)} %` : "",
    j.outcome || j.error || "",
  ]);
  const bots = (store.bots || []).map((b) => [
    b.username ? `${b.number} (@${b.username})` : b.number,
    b.up ? "up" : `down: ${b.reason || "?"}`,
    b.parts_held ?? "",
    b.bytes_held != null ? size(b.bytes_held) : "",
  ]);
  $("status").replaceChildren(
    element("h2", {}, "Jobs"),
    jobs.length ? table(["file", "state", "stage", "done", "result"], jobs) : element("p", { class: "muted" }, "No jobs."),
    element("h2", {}, "Store"),
    element("p", {}, `${store.kind || "?"}: ${store.up ? "up" : `down (${store.error || "unknown"})`}`),
    bots.length ? table(["bot", "state", "parts", "holds"], bots) : null,
    element("h2", {}, "Cache"),
    element(
      "p",
      {},
      `${size(cache.used_bytes || 0)} of ${size(cache.capacity_bytes || 0)}, hit ratio ${cache.hit_ratio != null ? Math.round(cache.hit_ratio * 100) + " %" : "–"}`,
    ),
    element("h2", {}, "Encoder"),
    element("p", {}, status.encoder ? `${status.encoder.name}${status.encoder.note ? ` (${status.encoder.note})` : ""}` : "–"),
  );
  window.tgfs.ready = true;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => location.hash === "#/status" && showStatus(), POLL_MS);
}

// ---- routing ---------------------------------------------------------------------------------

async function route() {
  window.tgfs.ready = false;
  clearTimeout(refreshTimer);
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [view, ...rest] = hash.split("/");
  const path = rest.join("/");
  for (const id of ["library-view", "player-view", "status-view"]) $(id).hidden = true;
  if (view !== "play") stopPlayer();
  try {
    if (view === "play") {
      $("player-view").hidden = false;
      await showPlayer(path);
    } else if (view === "status") {
      $("status-view").hidden = false;
      await showStatus();
    } else {
      $("library-view").hidden = false;
      await showLibrary(view === "folder" ? path : "");
    }
  } catch (error) {
    window.tgfs.errors.push(String(error));
    $("empty").hidden = false;
    $("empty").textContent = String(error);
  }
}

$("search").addEventListener("input", () => {
  if (!location.hash.startsWith("#/play") && !location.hash.startsWith("#/status")) route();
});
$("new-folder").addEventListener("click", newFolder);
$("pick").addEventListener("change", (event) => {
  for (const file of event.target.files) upload(file);
  event.target.value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  for (const file of event.dataTransfer.files) upload(file);
});
window.addEventListener("hashchange", route);
route();
