// Starts Swagger UI on the API reference page (/schema/reference). A file, not an inline
// script: the site's Content-Security-Policy is default-src 'self'.
(function () {
  "use strict";
  var root = document.getElementById("reference");
  if (!root || typeof window.SwaggerUIBundle !== "function") {
    return;
  }
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-document"),
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
    tryItOutEnabled: false
  });
})();
