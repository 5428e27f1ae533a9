//! WeChat-side simulator (see issue 3).
