// One small chart per compared table: its last numeric column, row by row, A against B.
for (const canvas of document.querySelectorAll("canvas.chart")) {
  const s = JSON.parse(canvas.dataset.series);
  new Chart(canvas, {
    type: "bar",
    data: { labels: s.labels, datasets: [{ label: "A: " + s.column, data: s.a }, { label: "B: " + s.column, data: s.b }] },
    options: { animation: false, responsive: true },
  });
}
document.body.dataset.chartsReady = "1";
