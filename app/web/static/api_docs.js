// Starts Swagger UI (/docs) or ReDoc (/redoc) on the OpenAPI document; a static file so
// the page's Content-Security-Policy needs no inline script.
"use strict";
(function () {
  const root = document.getElementById("api-docs");
  const url = root.dataset.openapiUrl;
  if (root.dataset.viewer === "swagger") {
    window.ui = SwaggerUIBundle({
      url: url,
      domNode: root,
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    });
  } else {
    Redoc.init(url, {}, root);
  }
})();
