// Recotem UI helpers: upload progress (XHR progress events) and copy-to-clipboard.
(function () {
  "use strict";

  function setupUpload(form) {
    form.addEventListener("submit", function (event) {
      if (!window.XMLHttpRequest || !window.FormData) return; // plain POST fallback
      event.preventDefault();
      var bar = form.querySelector("progress");
      var status = form.querySelector("[data-upload-status]");
      var result = document.getElementById(form.dataset.result);
      var button = form.querySelector("button[type=submit]");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round((e.loaded / e.total) * 100);
        bar.hidden = false; bar.value = pct;
        status.textContent = pct < 100 ? "Uploading… " + pct + "%" : "Validating the file…";
      });
      xhr.addEventListener("load", function () {
        button.disabled = false;
        if (xhr.status >= 200 && xhr.status < 300 && xhr.getResponseHeader("X-Upload-Redirect")) {
          status.textContent = "Uploaded.";
          window.location.assign(xhr.getResponseHeader("X-Upload-Redirect"));
          return;
        }
        bar.hidden = true; status.textContent = "";
        result.innerHTML = xhr.responseText;
      });
      xhr.addEventListener("error", function () {
        button.disabled = false; bar.hidden = true;
        status.textContent = "The upload failed (network error). Try again.";
      });
      button.disabled = true; bar.hidden = false; bar.value = 0;
      result.innerHTML = ""; status.textContent = "Uploading… 0%";
      xhr.send(new FormData(form));
    });
  }

  function setupCopy(button) {
    button.addEventListener("click", function () {
      var target = document.getElementById(button.dataset.copy);
      var text = target.textContent.trim();
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { fallback(target, done); });
      } else { fallback(target, done); }
    });
  }

  function fallback(target, done) {
    var range = document.createRange();
    range.selectNodeContents(target);
    var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
    try { document.execCommand("copy"); done(); } catch (e) { /* the key stays selected */ }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-upload]").forEach(setupUpload);
    document.querySelectorAll("[data-copy]").forEach(setupCopy);
  });
})();
