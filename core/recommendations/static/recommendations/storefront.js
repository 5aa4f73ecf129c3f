// The storefront demo: a shop's front end calling the public API with a narrowly scoped key.
// Vanilla JavaScript, no build step. The server renders the config (key, grid products) as JSON.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("storefront-config").textContent);
  const SESSION_LENGTH = 20; // recent items sent as session_items
  const titles = new Map(config.products.map((p) => [p.id, p]));
  let selected = null;

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function shopperId() {
    const fromUrl = new URLSearchParams(location.search).get("user");
    if (fromUrl) return fromUrl;
    let id = localStorage.getItem("storefront-demo-shopper");
    if (!id) {
      id = "demo-" + randomId().slice(0, 12);
      localStorage.setItem("storefront-demo-shopper", id);
    }
    return id;
  }

  const shopper = shopperId();
  let sessionId = sessionStorage.getItem("storefront-demo-session-id");
  if (!sessionId) {
    sessionId = randomId();
    sessionStorage.setItem("storefront-demo-session-id", sessionId);
  }

  // The session's recent items: the API personalises from them at once, before the feature
  // pipeline has folded the events into the shopper's stored history.
  function sessionItems() {
    return JSON.parse(sessionStorage.getItem("storefront-demo-items:" + shopper) || "[]");
  }
  function rememberItem(itemId) {
    const items = sessionItems().filter((id) => id !== itemId);
    items.push(itemId);
    sessionStorage.setItem(
      "storefront-demo-items:" + shopper,
      JSON.stringify(items.slice(-SESSION_LENGTH)),
    );
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  async function api(method, path, body) {
    const response = await fetch(config.apiBase + path, {
      method,
      headers: {
        Authorization: "Bearer " + config.apiKey,
        ...(body ? { "Content-Type": "application/json" } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
      credentials: "omit",
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = (data.error && data.error.message) || data.detail || JSON.stringify(data);
      throw new Error(`${method} ${path}: ${response.status} ${detail}`);
    }
    return data;
  }

  async function learnTitles(ids) {
    const missing = ids.filter((id) => !titles.has(id));
    if (!missing.length) return;
    const response = await fetch(
      config.itemsUrl + "?ids=" + encodeURIComponent(missing.join(",")),
      { headers: { Authorization: "Bearer " + config.apiKey }, credentials: "omit" },
    );
    if (!response.ok) return; // titles are a nicety: show ids instead
    const data = await response.json();
    for (const item of data.items) titles.set(item.id, item);
  }

  function card(itemId, extra) {
    const product = titles.get(itemId) || { id: itemId, title: itemId, category: "" };
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "card";
    button.dataset.itemId = itemId;
    if (extra.recommendationId) button.dataset.recommendationId = extra.recommendationId;
    if (itemId === selected) button.classList.add("selected");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = product.title;
    const category = document.createElement("span");
    category.className = "category";
    category.textContent = product.category || "";
    button.append(title, category);
    if (extra.score !== undefined) {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `#${extra.rank} · ${extra.score.toFixed(3)}`;
      button.append(score);
    }
    if (product.price !== null && product.price !== undefined) {
      const price = document.createElement("span");
      price.className = "price";
      price.textContent = product.price.toFixed(2);
      button.append(price);
    }
    button.addEventListener("click", () => open(itemId, extra.recommendationId));
    li.append(button);
    return li;
  }

  function renderList(sectionId, answer) {
    const section = document.getElementById(sectionId);
    const list = document.getElementById(sectionId + "-items");
    list.replaceChildren(
      ...answer.items.map((item) =>
        card(item.item_id, {
          recommendationId: answer.recommendation_id,
          score: item.score,
          rank: item.rank,
        }),
      ),
    );
    const model = answer.model.version ? `${answer.model.name} v${answer.model.version}` : "-";
    document.getElementById(sectionId + "-meta").textContent =
      `source ${answer.source} · model ${model} · list ${answer.recommendation_id.slice(0, 8)}`;
    section.dataset.recommendationId = answer.recommendation_id;
    section.dataset.source = answer.source;
    section.dataset.version = String(Number(section.dataset.version || 0) + 1);
    section.dataset.state = "ready";
  }

  async function loadRecommendations() {
    const params = new URLSearchParams({ count: String(config.count) });
    const recent = sessionItems();
    if (recent.length) params.set("session_items", recent.join(","));
    const answer = await api(
      "GET",
      `/users/${encodeURIComponent(shopper)}/recommendations?${params}`,
    );
    await learnTitles(answer.items.map((item) => item.item_id));
    renderList("recommended", answer);
  }

  async function loadSimilar(itemId) {
    const answer = await api(
      "GET",
      `/items/${encodeURIComponent(itemId)}/similar?count=${config.count}`,
    );
    await learnTitles(answer.items.map((item) => item.item_id));
    renderList("similar", answer);
    document.getElementById("similar-title").textContent =
      `Similar to ${(titles.get(itemId) || { title: itemId }).title}`;
  }

  async function sendEvents(itemId, recommendationId) {
    const base = { user_id: shopper, item_id: itemId, session_id: sessionId };
    const click = { event_id: randomId(), type: "click", ...base };
    if (recommendationId) click.recommendation_id = recommendationId;
    const view = { event_id: randomId(), type: "view", ...base };
    return api("POST", "/events", [click, view]);
  }

  async function open(itemId, recommendationId) {
    selected = itemId;
    for (const el of document.querySelectorAll(".card")) {
      el.classList.toggle("selected", el.dataset.itemId === itemId);
    }
    try {
      const result = await sendEvents(itemId, recommendationId);
      rememberItem(itemId);
      setStatus(`click and view of ${itemId} sent (${result.accepted} accepted)`);
      document.body.dataset.eventsSent = String(Number(document.body.dataset.eventsSent || 0) + 2);
      await Promise.all([loadSimilar(itemId), loadRecommendations()]);
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  function renderGrid() {
    const grid = document.getElementById("product-grid");
    grid.replaceChildren(...config.products.map((p) => card(p.id, {})));
  }

  document.getElementById("shopper").textContent = shopper;
  document.getElementById("new-shopper").addEventListener("click", () => {
    localStorage.removeItem("storefront-demo-shopper");
    sessionStorage.removeItem("storefront-demo-items:" + shopper);
    const url = new URL(location.href);
    url.searchParams.delete("user");
    location.assign(url);
  });
  renderGrid();
  loadRecommendations().catch((error) => {
    document.getElementById("recommended").dataset.state = "error";
    setStatus(error.message, true);
  });
})();
