// bitlens dashboard index: sort by clicking a column header, filter by text and polarity.
// The view state lives in the address (#sort=KEY&dir=asc|desc&q=TEXT&pol=on|off) so a view can be linked.
(function () {
  "use strict";
  var table = document.getElementById("features");
  if (!table) { return; }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById("filter");
  var polarity = document.getElementById("polarity");
  var count = document.getElementById("count");
  var state = { sort: "", dir: "asc", q: "", pol: "" };
  rows.forEach(function (r) { r._text = r.textContent.toLowerCase(); });

  function cellValue(row, index, type) {
    var cell = row.cells[index];
    var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    if (type === "num") { var x = parseFloat(v); return isNaN(x) ? -Infinity : x; }
    return v.toLowerCase();
  }

  function sortRows() {
    heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
    if (!state.sort) { return; }
    var index = heads.findIndex(function (h) { return h.getAttribute("data-key") === state.sort; });
    if (index < 0) { return; }
    var type = heads[index].getAttribute("data-type");
    var sign = state.dir === "desc" ? -1 : 1;
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      return x < y ? -sign : x > y ? sign : 0;
    });
    heads[index].setAttribute("aria-sort", state.dir === "desc" ? "descending" : "ascending");
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    body.appendChild(frag);
  }

  function filterRows() {
    var q = state.q.toLowerCase(), shown = 0;
    rows.forEach(function (r) {
      var ok = (!q || r._text.indexOf(q) >= 0) && (!state.pol || r.getAttribute("data-pol") === state.pol);
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " features";
  }

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.sort = params.get("sort") || "";
    state.dir = params.get("dir") === "desc" ? "desc" : "asc";
    state.q = params.get("q") || "";
    state.pol = params.get("pol") || "";
    filter.value = state.q;
    polarity.value = state.pol;
  }

  function writeHash() {
    var params = new URLSearchParams();
    if (state.sort) { params.set("sort", state.sort); params.set("dir", state.dir); }
    if (state.q) { params.set("q", state.q); }
    if (state.pol) { params.set("pol", state.pol); }
    try {
      history.replaceState(null, "", "#" + params.toString());
    } catch (e) {  // some browsers refuse history changes on file:// pages; the hash still works
      location.hash = params.toString();
    }
  }

  heads.forEach(function (h) {
    h.addEventListener("click", function () {
      var key = h.getAttribute("data-key");
      state.dir = state.sort === key && state.dir === "asc" ? "desc" : "asc";
      state.sort = key;
      sortRows();
      writeHash();
    });
  });
  filter.addEventListener("input", function () { state.q = filter.value; filterRows(); writeHash(); });
  polarity.addEventListener("change", function () { state.pol = polarity.value; filterRows(); writeHash(); });

  readHash();
  sortRows();
  filterRows();
})();
