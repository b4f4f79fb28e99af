// The console's only script (the CSP allows no other): confirmations and live counters by polling JSON.
"use strict";

function confirmForms(root) {
  root.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  });
}

// The buttons a page offers depend on the state (pause while sending, none once sent): when the state
// changes, take them from a fresh copy of the page, so the server stays the one that decides.
function refreshActions(state) {
  var holder = document.getElementById("campaign-actions");
  if (!holder || holder.dataset.state === state) {
    return;
  }
  fetch(window.location.href, { credentials: "same-origin" })
    .then(function (response) {
      return response.ok && !response.redirected ? response.text() : null;
    })
    .then(function (html) {
      if (!html) {
        return;
      }
      var parsed = new DOMParser().parseFromString(html, "text/html");
      ["campaign-actions", "campaign-state-badge"].forEach(function (id) {
        var fresh = parsed.getElementById(id);
        var current = document.getElementById(id);
        if (fresh && current) {
          current.replaceWith(fresh);
          confirmForms(fresh);
        }
      });
    })
    .catch(function () {});
}

function pollProgress(box) {
  var url = box.dataset.pollUrl;
  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.redirected || !response.ok) {
          // Logged out (idle timeout) or gone: show the page the server sends instead.
          window.location.reload();
          return null;
        }
        return response.json();
      })
      .then(function (data) {
        if (!data) {
          return;
        }
        box.querySelectorAll("[data-field]").forEach(function (cell) {
          var value = data[cell.dataset.field];
          if (value !== undefined) {
            cell.textContent = String(value);
          }
        });
        if (data.state !== undefined) {
          refreshActions(String(data.state));
          box.dataset.state = String(data.state);
        }
        if (data.finished !== undefined) {
          box.dataset.finished = String(Boolean(data.finished));
        }
        box.querySelectorAll("[data-value-field]").forEach(function (bar) {
          var value = data[bar.dataset.valueField];
          if (value !== undefined) {
            bar.value = value;
            bar.textContent = String(value) + "%";
          }
        });
        if (!data.finished) {
          window.setTimeout(tick, 1000);
        }
      })
      .catch(function () {
        window.setTimeout(tick, 5000);
      });
  }
  window.setTimeout(tick, 1000);
}

// Copy buttons (sending-domain records): the text of the element the button names.
function copyButtons(root) {
  root.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.dataset.copy);
      if (source && navigator.clipboard) {
        navigator.clipboard.writeText(source.textContent).then(function () {
          button.classList.add("copied");
        });
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", function () {
  confirmForms(document);
  copyButtons(document);
  document.querySelectorAll("[data-poll-url]").forEach(pollProgress);
});
