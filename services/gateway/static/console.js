// The console's only script (the CSP allows no other): confirmations and live counters by polling JSON.
"use strict";

function confirmForms() {
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  });
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

document.addEventListener("DOMContentLoaded", function () {
  confirmForms();
  document.querySelectorAll("[data-poll-url]").forEach(pollProgress);
});
