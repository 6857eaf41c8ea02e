use super::*;

fn route_cache(authenticated: bool) -> RouteCache {
    let spec = CacheSpec {
        authenticated,
        stale_if_error: Some("10m".into()),
        max_object: Some(1000),
    };
    RouteCache::new("catalog-read", &spec).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn read(plan: Plan) -> (Key, bool, bool, bool) {
    match plan {
        Plan::Read {
            key,
            head,
            fetch_fresh,
            credentials,
        } => (key, head, fetch_fresh, credentials),
        Plan::Bypass => panic!("expected a read"),
    }
}

#[test]
fn only_reads_without_credentials_or_no_store_use_the_cache() {
    let cache = route_cache(false);
    let none = HeaderMap::new();
    assert!(matches!(
        plan(&cache, &Method::POST, None, "/p", &none),
        Plan::Bypass
    ));
    let (key, head, fresh, _) = read(plan(&cache, &Method::HEAD, None, "/p?x=1", &none));
    assert!(head && !fresh);
    assert_eq!(key.path(), "/p");
    for credentials in [("authorization", "Bearer t"), ("cookie", "s=1")] {
        assert!(matches!(
            plan(&cache, &Method::GET, None, "/p", &headers(&[credentials])),
            Plan::Bypass
        ));
    }
    let no_store = headers(&[("cache-control", "no-store")]);
    assert!(matches!(
        plan(&cache, &Method::GET, None, "/p", &no_store),
        Plan::Bypass
    ));
    for fresh in ["no-cache", "max-age=0"] {
        let (_, _, fetch_fresh, _) = read(plan(
            &cache,
            &Method::GET,
            None,
            "/p",
            &headers(&[("cache-control", fresh)]),
        ));
        assert!(fetch_fresh);
    }
    let (_, _, fetch_fresh, _) = read(plan(
        &cache,
        &Method::GET,
        None,
        "/p",
        &headers(&[("pragma", "no-cache")]),
    ));
    assert!(fetch_fresh);
}

#[test]
fn a_route_that_allows_credentials_still_shares_only_public_answers() {
    let cache = route_cache(true);
    let request = headers(&[("authorization", "Bearer t")]);
    let (_, _, _, credentials) = read(plan(&cache, &Method::GET, None, "/p", &request));
    assert!(credentials);
    let ok = StatusCode::OK;
    let plain = headers(&[("cache-control", "max-age=5")]);
    assert!(storable(&cache, true, &request, ok, &plain, Some(10)).is_none());
    assert!(storable(&cache, false, &HeaderMap::new(), ok, &plain, Some(10)).is_some());
    let public = headers(&[("cache-control", "public, max-age=5")]);
    assert!(storable(&cache, true, &request, ok, &public, Some(10)).is_some());
    let shared = headers(&[("cache-control", "s-maxage=5")]);
    assert!(storable(&cache, true, &request, ok, &shared, Some(10)).is_some());
}

#[test]
fn what_an_instance_does_not_allow_is_not_kept() {
    let cache = route_cache(false);
    let none = HeaderMap::new();
    let ok = StatusCode::OK;
    let keep = |status, response: &[(&str, &str)], length| {
        storable(&cache, false, &none, status, &headers(response), length).is_some()
    };
    assert!(keep(
        ok,
        &[("cache-control", "public, max-age=5")],
        Some(10)
    ));
    // No lifetime, no heuristics.
    assert!(!keep(ok, &[], Some(10)));
    assert!(!keep(ok, &[("cache-control", "public")], Some(10)));
    for said in [
        "private, max-age=5",
        "no-store, max-age=5",
        "no-cache, max-age=5",
    ] {
        assert!(!keep(ok, &[("cache-control", said)], Some(10)), "{said}");
    }
    let cookie = [("cache-control", "max-age=5"), ("set-cookie", "s=1")];
    assert!(!keep(ok, &cookie, Some(10)));
    let any = [("cache-control", "max-age=5"), ("vary", "*")];
    assert!(!keep(ok, &any, Some(10)));
    // Unknown or too long a body.
    assert!(!keep(ok, &[("cache-control", "max-age=5")], None));
    assert!(!keep(ok, &[("cache-control", "max-age=5")], Some(1001)));
    // A 404 may be kept, a 500 or a 206 not.
    assert!(keep(
        StatusCode::NOT_FOUND,
        &[("cache-control", "max-age=5")],
        Some(10)
    ));
    assert!(!keep(
        StatusCode::INTERNAL_SERVER_ERROR,
        &[("cache-control", "max-age=5")],
        Some(10)
    ));
    assert!(!keep(
        StatusCode::PARTIAL_CONTENT,
        &[("cache-control", "max-age=5")],
        Some(10)
    ));
}

#[test]
fn an_entry_keeps_its_lifetimes_tags_and_variant() {
    let cache = route_cache(false);
    let request = headers(&[("accept-language", "fr")]);
    let response = headers(&[
        (
            "cache-control",
            "public, max-age=5, stale-while-revalidate=30",
        ),
        ("vary", "Accept-Language"),
        ("surrogate-key", "product-7  products"),
        ("age", "2"),
        ("x-cache", "hit"),
    ]);
    let storable = storable(&cache, false, &request, StatusCode::OK, &response, Some(5)).unwrap();
    let entry = storable.into_entry(StatusCode::OK, response, Bytes::from_static(b"hello"));
    assert_eq!(entry.fresh_for, Duration::from_secs(5));
    assert_eq!(entry.stale_while_revalidate, Duration::from_secs(30));
    // The route's stale_if_error (10 min) is longer than the answer's (none).
    assert_eq!(entry.stale_if_error, Duration::from_secs(600));
    assert_eq!(entry.age_at_arrival, Duration::from_secs(2));
    assert_eq!(
        &*entry.tags,
        &["product-7".into(), "products".into()] as &[Box<str>]
    );
    assert!(entry.matches(&request));
    assert!(!entry.matches(&HeaderMap::new()));
    // What the gateway sets per answer, and the surrogate keys, are not stored.
    assert!(!entry.headers.contains_key(AGE));
    assert!(!entry.headers.contains_key(&X_CACHE));
    assert!(!entry.headers.contains_key(&SURROGATE_KEY));
    assert_eq!(entry.headers[CONTENT_LENGTH], "5");
}

fn stored(cache: &EdgeCache, route: &RouteCache, target: &str, tags: &str) -> Key {
    let (key, ..) = read(plan(route, &Method::GET, None, target, &HeaderMap::new()));
    let response = headers(&[
        ("cache-control", "public, max-age=60"),
        ("surrogate-key", tags),
    ]);
    let storable = storable(
        route,
        false,
        &HeaderMap::new(),
        StatusCode::OK,
        &response,
        Some(1),
    )
    .unwrap();
    let began = cache.begin();
    cache.insert(
        key.clone(),
        storable.into_entry(StatusCode::OK, response, Bytes::from_static(b"x")),
        began,
    );
    key
}

#[test]
fn purges_by_path_by_tag_and_all() {
    let _ = stratus_kit::metrics::install();
    let route = route_cache(false);
    let cache = EdgeCache::new(1 << 20);
    let none = HeaderMap::new();
    let one = stored(&cache, &route, "/products/1", "product-1 products");
    let one_query = stored(&cache, &route, "/products/1?fields=name", "product-1");
    let two = stored(&cache, &route, "/products/2", "product-2");
    let list = stored(&cache, &route, "/products", "products");
    cache.purge(&Purge::Path("/products/1".into()));
    assert!(cache.get(&one, &none, false).is_none());
    assert!(cache.get(&one_query, &none, false).is_none());
    assert!(cache.get(&two, &none, false).is_some());
    cache.purge(&Purge::Tags(vec!["products".into()]));
    assert!(cache.get(&list, &none, false).is_none());
    assert!(cache.get(&two, &none, false).is_some());
    cache.purge(&Purge::All);
    assert!(cache.get(&two, &none, false).is_none());
}

#[test]
fn a_request_with_credentials_gets_only_public_entries() {
    let _ = stratus_kit::metrics::install();
    let route = route_cache(true);
    let cache = EdgeCache::new(1 << 20);
    let (key, ..) = read(plan(&route, &Method::GET, None, "/p", &HeaderMap::new()));
    let response = headers(&[("cache-control", "max-age=60")]);
    let storable = storable(
        &route,
        false,
        &HeaderMap::new(),
        StatusCode::OK,
        &response,
        Some(1),
    )
    .unwrap();
    let began = cache.begin();
    cache.insert(
        key.clone(),
        storable.into_entry(StatusCode::OK, response, Bytes::from_static(b"x")),
        began,
    );
    assert!(cache.get(&key, &HeaderMap::new(), false).is_some());
    assert!(cache.get(&key, &HeaderMap::new(), true).is_none());
}

#[test]
fn a_fetch_that_began_before_a_purge_is_not_kept() {
    let _ = stratus_kit::metrics::install();
    let route = route_cache(false);
    let cache = EdgeCache::new(1 << 20);
    let (key, ..) = read(plan(&route, &Method::GET, None, "/p", &HeaderMap::new()));
    let response = headers(&[("cache-control", "max-age=60"), ("surrogate-key", "p")]);
    let entry = || {
        storable(
            &route,
            false,
            &HeaderMap::new(),
            StatusCode::OK,
            &response,
            Some(1),
        )
        .unwrap()
        .into_entry(StatusCode::OK, response.clone(), Bytes::from_static(b"x"))
    };
    let began = cache.begin();
    // A write elsewhere purges something while this fetch is on its way.
    cache.purge(&Purge::Tags(vec!["unrelated".into()]));
    cache.insert(key.clone(), entry(), began);
    assert!(cache.get(&key, &HeaderMap::new(), false).is_none());
    // Fetched anew after it: kept, and found by its tag.
    cache.insert(key.clone(), entry(), cache.begin());
    assert!(cache.get(&key, &HeaderMap::new(), false).is_some());
    cache.purge(&Purge::Tags(vec!["p".into()]));
    assert!(cache.get(&key, &HeaderMap::new(), false).is_none());
}
