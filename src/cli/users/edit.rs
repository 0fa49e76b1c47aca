//! Editing the users document with `toml_edit`: adding, changing and
//! removing `[users.NAME]` tables while keeping every other byte.

use super::*;

/// A user to append.
pub(super) struct NewUser {
    pub(super) hash: String,
    pub(super) groups: Vec<String>,
    pub(super) expires: Option<toml_edit::Datetime>,
}

/// Appends `[users.NAME]` after every other table (or, when the file keeps
/// its users in an inline `users = { .. }`, an inline entry there).
pub(super) fn add_user(doc: &mut DocumentMut, name: &str, user: NewUser) -> Result<(), UsersError> {
    let position = max_position(doc.as_table()) + 1;
    add_user_at(doc, name, user, position, None)
}

/// [`add_user`] at a document `position` past every table's, known to the
/// caller (an import adds many users, and finding it is a walk of the file),
/// right after the user `after` when the caller just added them (see
/// [`inline_push`]).
pub(super) fn add_user_at(
    doc: &mut DocumentMut,
    name: &str,
    user: NewUser,
    position: usize,
    after: Option<&str>,
) -> Result<(), UsersError> {
    let mut t = Table::new();
    t.insert("password", toml_edit::value(user.hash));
    t.insert("groups", toml_edit::value(user.groups.iter().collect::<Array>()));
    t.insert("disabled", toml_edit::value(false));
    if let Some(e) = user.expires {
        t.insert("expires", toml_edit::value(e));
    }
    t.set_position(position);
    if doc.as_table().is_empty() {
        // A file of comments only: they stay above the first user.
        let mut head = prefix_text(Some(doc.trailing()));
        while !head.is_empty() && !head.ends_with("\n\n") {
            head.push('\n');
        }
        t.decor_mut().set_prefix(head);
        doc.set_trailing("");
    }
    let users = doc.entry("users").or_insert_with(|| {
        let mut users = Table::new();
        users.set_implicit(true);
        Item::Table(users)
    });
    match users {
        Item::Table(users) => {
            users.insert(name, Item::Table(t));
        }
        Item::Value(Value::InlineTable(users)) => {
            let mut inline: InlineTable = t.into_inline_table();
            inline.fmt();
            inline_push(users, name, Value::InlineTable(inline), after);
        }
        _ => return Err(refused("internal error: `users` is neither a table nor an inline table")),
    }
    Ok(())
}

/// The highest document position of any table, so a new one goes last.
pub(super) fn max_position(t: &Table) -> usize {
    let own = t.position().unwrap_or(0);
    t.iter().filter_map(|(_, item)| item.as_table()).map(max_position).fold(own, usize::max)
}

/// The user's entry (header table, inline table or dotted keys).
pub(super) fn user_mut<'a>(doc: &'a mut DocumentMut, key: &str) -> Result<&'a mut Item, UsersError> {
    doc.get_mut("users")
        .and_then(Item::as_table_like_mut)
        .and_then(|u| u.get_mut(key))
        .filter(|u| u.is_table_like())
        .ok_or_else(|| refused(format!("internal error: user `{}` vanished from the document", shown(key))))
}

/// Sets `key = value` in a user, keeping the old value's place, spacing and
/// trailing comment; a new key goes at the end of the user's entry.
pub(super) fn set(user: &mut Item, key: &str, mut value: Value) {
    if let Item::Value(Value::InlineTable(t)) = user
        && !t.contains_key(key)
    {
        inline_push(t, key, value, None);
        return;
    }
    let Some(table) = user.as_table_like_mut() else { return };
    match table.get_mut(key) {
        Some(Item::Value(old)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        Some(other) => *other = Item::Value(value),
        None => {
            table.insert(key, Item::Value(value));
        }
    }
}

/// Appends `key = value` to an inline table as a person would: `, key = value`
/// with the space before `}` moved after the new last value. `last` names
/// the table's last key when the caller knows it: found by a walk of the
/// table, an import of 80,000 users into `users = { … }` took 11.5 s
/// (probe 338).
pub(super) fn inline_push(t: &mut InlineTable, key: &str, mut value: Value, last: Option<&str>) {
    let last = match last.filter(|k| t.contains_key(k)) {
        Some(k) => t.get_mut(k),
        None => t.iter_mut().last().map(|(_, v)| v),
    };
    let suffix = last.map(|v| {
        let s = prefix_text(v.decor().suffix());
        v.decor_mut().set_suffix("");
        s
    });
    value.decor_mut().set_prefix(" ");
    value.decor_mut().set_suffix(suffix.unwrap_or_else(|| " ".to_owned()));
    t.insert(key, value);
}

/// Removes a user. Comment lines directly above its header go with it;
/// comments separated from it by a blank line belong to the section, so
/// they are kept, moved in front of whatever followed the user. A comment
/// block right above the file's first table, with no blank line in it, is
/// the file's header and is kept too (removing the first user took it).
pub(super) fn remove_user(doc: &mut DocumentMut, key: &str) -> Result<(), UsersError> {
    let gone = || refused(format!("internal error: user `{}` vanished from the document", shown(key)));
    let first = table_positions(doc).into_iter().map(|(_, p)| p).min();
    // Root keys come before every table: `users.NAME.key = …` lines that
    // are the root's first begin the file.
    let users_first = doc.iter().next().is_some_and(|(k, _)| k == "users");
    let users = doc.get_mut("users").ok_or_else(gone)?;
    let Item::Table(t) = users else {
        users.as_table_like_mut().and_then(|u| u.remove(key)).ok_or_else(gone)?;
        return Ok(());
    };
    let next_key = t.iter().map(|(k, _)| k.to_owned()).skip_while(|k| k != key).nth(1);
    let container = t.position().unwrap_or(0);
    let starts_file = users_first && t.is_dotted() && t.iter().next().is_some_and(|(k, _)| k == key);
    match t.remove_entry(key).ok_or_else(gone)? {
        (_, Item::Table(removed)) if !removed.is_dotted() => {
            let at = removed.position().unwrap_or(0);
            drop_closing_notes(doc, at);
            let prefix = prefix_text(removed.decor().prefix());
            let section = if first == Some(at) && !prefix.lines().any(|l| l.trim().is_empty()) {
                Some(prefix).filter(|p| p.contains('#'))
            } else {
                section_part(removed.decor().prefix())
            };
            if section.is_some() || first == Some(at) {
                reattach(doc, at, section);
            }
        }
        // A line `name = {…}`, or lines `name.key = …` (dotted keys, whose
        // comments sit on the first line's last key): a section comment
        // above goes in front of what followed.
        (k, removed) => {
            let prefix = match &removed {
                Item::Table(dotted) => dotted.iter().next().and_then(|(first, _)| dotted.key(first)),
                _ => Some(&k),
            }
            .map(|k| k.leaf_decor().prefix());
            // The file's header, as above a first table (it went with the
            // user; probe 139).
            let header = prefix
                .filter(|_| starts_file)
                .map(prefix_text)
                .filter(|p| p.contains('#') && !p.lines().any(|l| l.trim().is_empty()));
            match (header.or_else(|| prefix.and_then(section_part)), next_key) {
                (Some(section), Some(next)) => prepend_to_lines_of(t, &next, &section),
                (Some(section), None) => reattach(doc, container, Some(section)),
                (None, _) => {}
            }
        }
    }
    show_users_table(doc);
    Ok(())
}

/// After the last user went: a `[users]` line says there are none. A file
/// without one (`[users.NAME]` tables or `users.NAME.…` keys leave a table
/// that is not written) reads at a reload as one still being written, and
/// is refused. A `[users]` line or `users = {…}` already there stays as it
/// is, with its comments; a new one gets what was left around the last
/// user (the file's header, a closing comment) above it, not below.
fn show_users_table(doc: &mut DocumentMut) {
    let shown = match doc.get("users") {
        Some(Item::Table(t)) => !t.is_empty() || (!t.is_implicit() && !t.is_dotted()),
        Some(_) => true,
        None => false,
    };
    if shown {
        return;
    }
    let mut around = prefix_text(Some(doc.trailing()));
    if !around.is_empty() && !around.ends_with("\n\n") {
        around.push('\n');
    }
    doc.set_trailing("");
    let mut users = match doc.remove("users") {
        Some(Item::Table(t)) => t,
        _ => Table::new(),
    };
    users.set_implicit(false);
    users.set_dotted(false);
    users.decor_mut().set_prefix(around);
    doc.insert("users", Item::Table(users));
}

/// Comment lines right below the last line of the removed table at
/// `position`, set apart from what follows by a blank line, are a note
/// inside that table (`# alice: ext. 5551`): they go with it. (They were
/// kept, and the note about a removed user was left in the table above;
/// probe 285.) toml_edit keeps them in front of the next table's header,
/// or at the end of the file, also when only the blank line follows them
/// there (probe 292); comment lines with no blank line below them are the
/// next table's, or the file's closing comment: those stay.
fn drop_closing_notes(doc: &mut DocumentMut, position: usize) {
    fn without_notes(text: &str) -> Option<String> {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let notes = lines.iter().take_while(|l| l.trim_start().starts_with('#')).count();
        let blank = lines.get(notes).is_some_and(|l| l.trim().is_empty());
        (notes > 0 && blank).then(|| lines[notes..].concat())
    }
    match table_after(doc, position) {
        Some(t) => {
            if let Some(rest) = without_notes(&prefix_text(t.decor().prefix())) {
                t.decor_mut().set_prefix(rest);
            }
        }
        None => {
            if let Some(rest) = without_notes(&prefix_text(Some(doc.trailing()))) {
                doc.set_trailing(rest);
            }
        }
    }
}

/// Puts `text` (whole comment lines) in front of the first line of the
/// entry `key` of `t`: its header, its line, or its first dotted line.
fn prepend_to_lines_of(t: &mut toml_edit::Table, key: &str, text: &str) {
    fn prepend(decor: &mut toml_edit::Decor, text: &str) {
        let old = prefix_text(decor.prefix());
        decor.set_prefix(format!("{text}{old}"));
    }
    match t.get_mut(key) {
        Some(Item::Table(next)) if next.is_dotted() => {
            let first = next.iter().next().map(|(k, _)| k.to_owned());
            if let Some(mut k) = first.and_then(|first| next.key_mut(&first)) {
                prepend(k.leaf_decor_mut(), text);
            }
        }
        Some(Item::Table(next)) => prepend(next.decor_mut(), text),
        _ => {
            if let Some(mut k) = t.key_mut(key) {
                prepend(k.leaf_decor_mut(), text);
            }
        }
    }
}

/// Every table with a header, as (path below `users`, position); `None` is
/// `[users]` itself.
pub(super) fn table_positions(doc: &DocumentMut) -> Vec<(Option<String>, usize)> {
    let Some(users) = doc.get("users").and_then(Item::as_table) else { return Vec::new() };
    let own = users.position().filter(|_| !users.is_implicit() && !users.is_dotted()).map(|p| (None, p));
    let children = users.iter().filter_map(|(k, item)| {
        let t = item.as_table().filter(|t| !t.is_dotted())?;
        Some((Some(k.to_owned()), t.position()?))
    });
    own.into_iter().chain(children).collect()
}

pub(super) fn prefix_text(raw: Option<&toml_edit::RawString>) -> String {
    raw.and_then(|r| r.as_str()).unwrap_or("").to_owned()
}

/// The part of a decor prefix before its last blank line, if it holds a
/// comment: that part describes a section, not the item right below it.
pub(super) fn section_part(prefix: Option<&toml_edit::RawString>) -> Option<String> {
    let text = prefix_text(prefix);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let last_blank = lines.iter().rposition(|l| l.trim().is_empty())?;
    let kept: String = lines.get(..last_blank)?.concat();
    kept.contains('#').then_some(kept)
}

pub(super) fn without_leading_blank_lines(mut text: &str) -> &str {
    while let Some((line, rest)) = text.split_once('\n') {
        if !line.trim().is_empty() {
            break;
        }
        text = rest;
    }
    text
}

/// The first table with a header placed after `position`, if any.
fn table_after(doc: &mut DocumentMut, position: usize) -> Option<&mut toml_edit::Table> {
    let (next, _) =
        table_positions(doc).into_iter().filter(|(_, p)| *p > position).min_by_key(|(_, p)| *p)?;
    let users = doc.get_mut("users")?.as_table_mut()?;
    match next {
        None => Some(users),
        Some(k) => users.get_mut(&k)?.as_table_mut(),
    }
}

/// Puts `section` in front of the first table placed after `position`, or at
/// the end of the file when there is none. Without a section, the table
/// that becomes the first one loses its leading blank lines.
pub(super) fn reattach(doc: &mut DocumentMut, position: usize, section: Option<String>) {
    match (table_after(doc, position), section) {
        (Some(t), section) => {
            let old = t.decor().prefix().and_then(|r| r.as_str()).unwrap_or("\n").to_owned();
            let new = match section {
                Some(s) => format!("{s}{old}"),
                None => without_leading_blank_lines(&old).to_owned(),
            };
            t.decor_mut().set_prefix(new);
        }
        (None, Some(section)) => {
            let old = prefix_text(Some(doc.trailing()));
            doc.set_trailing(format!("{section}{old}"));
        }
        (None, None) => {}
    }
}
