// Draws the lineage graph of the page's start (an artifact or a run) with cytoscape.js.
(async function () {
  const box = document.getElementById("graph");
  const start = box.dataset.start;
  const resp = await fetch("/api/lineage/" + encodeURIComponent(start));
  if (!resp.ok) { box.textContent = "No lineage for " + start; return; }
  const g = await resp.json();
  const elements = g.nodes.map(n => ({ data: { id: n.id, label: n.label, type: n.type } }))
    .concat(g.edges.map((e, i) => ({ data: { id: "e" + i, source: e.from, target: e.to } })));
  window.cy = cytoscape({
    container: box, elements,
    layout: { name: "breadthfirst", directed: true, spacingFactor: 1.2 },
    style: [
      { selector: "node", style: { label: "data(label)", "font-size": 11, "text-valign": "center", "text-wrap": "wrap", "text-max-width": 140, width: 150, height: 38, "background-color": "#dbe7ff" } },
      { selector: 'node[type = "run"]', style: { shape: "round-rectangle", "background-color": "#ffe2b8" } },
      { selector: "edge", style: { "curve-style": "bezier", "target-arrow-shape": "triangle", width: 1.5 } },
    ],
  });
  window.cy.on("tap", "node", ev => {
    const d = ev.target.data();
    window.location.href = d.type === "run" ? "/runs/" + encodeURIComponent(d.label)
                                            : "/lineage/" + encodeURIComponent(d.label);
  });
  document.body.dataset.graphReady = "1";
})();
