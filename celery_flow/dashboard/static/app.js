// celery_flow dashboard: the only script. Pages work without it; it flags invalid JSON
// in textareas marked data-json before a form is submitted.
(function () {
  "use strict";
  function check(area) {
    var text = area.value.trim();
    var ok = true;
    if (text) {
      try { JSON.parse(text); } catch (e) { ok = false; }
    }
    area.classList.toggle("invalid", !ok);
    area.setCustomValidity(ok ? "" : "Not valid JSON");
    return ok;
  }
  document.addEventListener("input", function (ev) {
    if (ev.target.matches && ev.target.matches("textarea[data-json]")) check(ev.target);
  });
  document.addEventListener("submit", function (ev) {
    var areas = ev.target.querySelectorAll("textarea[data-json]");
    for (var i = 0; i < areas.length; i++) {
      if (!check(areas[i])) { ev.preventDefault(); areas[i].reportValidity(); return; }
    }
  });
})();
