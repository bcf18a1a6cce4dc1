//! The pickle machine: opcodes executed on a stack of [`Slot`]s over a flat arena. Globals,
//! calls and objects are in `objects`, integers and text in `text`.

use super::text::lossy_utf8;
use super::{
    DecodeError, MAX_DEPTH, MAX_INT_DIGITS, MAX_LONG_BYTES, MAX_SHORT_LINE, Obj, Slot, invalid,
    kind, over_budget, truncated,
};

pub(super) struct Machine<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) stack: Vec<Slot>,
    /// Stack lengths at each MARK.
    pub(super) marks: Vec<usize>,
    /// Memo entries by index. Picklers number them 0, 1, 2, ...; an index beyond the node budget
    /// is refused, so this stays within the budget too.
    pub(super) memo: Vec<Option<Slot>>,
    /// Entries set in `memo` (MEMOIZE numbers the next one by this).
    pub(super) memo_count: usize,
    pub(super) arena: Vec<Obj>,
    /// Per arena entry: referenced from more than one place (fetched from the memo, or DUP'd).
    /// The rest are moved, not copied, into the result.
    pub(super) shared: Vec<bool>,
    /// Pushes, memo entries and copied container items so far: bounds the machine's memory.
    pub(super) spent: usize,
    pub(super) max_nodes: usize,
    pub(super) unsupported_global: bool,
    pub(super) lossy_text: bool,
}

impl<'a> Machine<'a> {
    pub(super) fn run(&mut self) -> Result<Slot, DecodeError> {
        loop {
            let op = self.byte()?;
            match op {
                b'(' => {
                    if self.marks.len() >= MAX_DEPTH {
                        return Err(over_budget("marks nested too deeply"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'.' => return self.pop(),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.mark_shared(top);
                    self.push(top)?;
                }
                // Scalars.
                b'N' => self.push(Slot::None)?,
                0x88 => self.push(Slot::Bool(true))?,
                0x89 => self.push(Slot::Bool(false))?,
                b'I' => {
                    let line = self.line(MAX_INT_DIGITS + 2)?;
                    let slot = match line {
                        b"01" => Slot::Bool(true),
                        b"00" => Slot::Bool(false),
                        digits => self.int_text(digits)?,
                    };
                    self.push(slot)?;
                }
                b'J' => {
                    let n = i32::from_le_bytes(self.array()?);
                    self.push(Slot::Int(i64::from(n)))?;
                }
                b'K' => {
                    let n = self.byte()?;
                    self.push(Slot::Int(i64::from(n)))?;
                }
                b'M' => {
                    let n = u16::from_le_bytes(self.array()?);
                    self.push(Slot::Int(i64::from(n)))?;
                }
                b'L' => {
                    let line = self.line(MAX_INT_DIGITS + 2)?;
                    let digits = line.strip_suffix(b"L").unwrap_or(line);
                    let slot = self.int_text(digits)?;
                    self.push(slot)?;
                }
                0x8a => {
                    let n = usize::from(self.byte()?);
                    let bytes = self.take(n)?;
                    let slot = self.long_bytes(bytes)?;
                    self.push(slot)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = usize::try_from(n).map_err(|_| invalid("negative LONG4 size"))?;
                    if n > MAX_LONG_BYTES {
                        return Err(over_budget("integer too long"));
                    }
                    let bytes = self.take(n)?;
                    let slot = self.long_bytes(bytes)?;
                    self.push(slot)?;
                }
                b'F' => {
                    let line = self.line(MAX_SHORT_LINE)?;
                    let f = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| invalid("bad FLOAT"))?;
                    self.push(Slot::Float(f))?;
                }
                b'G' => {
                    let f = f64::from_be_bytes(self.array()?);
                    self.push(Slot::Float(f))?;
                }
                // Text and bytes.
                b'V' => {
                    let line = self.line(usize::MAX)?;
                    let text = self.raw_unicode_escape(line);
                    self.push_obj(Obj::Str(text))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    self.push_text(n)?;
                }
                0x8c => {
                    let n = usize::from(self.byte()?);
                    self.push_text(n)?;
                }
                0x8d => {
                    let n = self.size8()?;
                    self.push_text(n)?;
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = usize::try_from(n).map_err(|_| invalid("negative BINSTRING size"))?;
                    self.push_text(n)?;
                }
                b'U' => {
                    let n = usize::from(self.byte()?);
                    self.push_text(n)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    self.push_bytes(n)?;
                }
                b'C' => {
                    let n = usize::from(self.byte()?);
                    self.push_bytes(n)?;
                }
                0x8e | 0x96 => {
                    let n = self.size8()?;
                    self.push_bytes(n)?;
                }
                // Containers.
                b']' | 0x8f => self.push_obj(Obj::List(Vec::new()))?,
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::List(items))?;
                }
                b')' => self.push_obj(Obj::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let at = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .filter(|&at| self.marks.last().is_none_or(|&m| at >= m))
                        .ok_or_else(|| invalid("stack underflow"))?;
                    let items = self.stack.split_off(at);
                    self.push_obj(Obj::Tuple(items))?;
                }
                b'}' => self.push_obj(Obj::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push_obj(Obj::Dict(pairs))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.extend_dict(pairs)?;
                }
                // The memo.
                b'p' => {
                    let index = self.line_index()?;
                    self.memo_put(index)?;
                }
                b'q' => {
                    let index = u32::from(self.byte()?);
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = u32::from_le_bytes(self.array()?);
                    self.memo_put(index)?;
                }
                0x94 => {
                    // MEMOIZE numbers entries by how many there are.
                    let index = u32::try_from(self.memo_count)
                        .map_err(|_| over_budget("memo too large"))?;
                    self.memo_put(index)?;
                }
                b'g' => {
                    let index = self.line_index()?;
                    self.memo_get(index)?;
                }
                b'h' => {
                    let index = u32::from(self.byte()?);
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = u32::from_le_bytes(self.array()?);
                    self.memo_get(index)?;
                }
                // Framing.
                0x80 => {
                    let protocol = self.byte()?;
                    if protocol > 5 {
                        return Err(DecodeError::new(
                            kind::PICKLE_OPCODE,
                            format!("unsupported pickle protocol {protocol}"),
                        ));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                // Globals and objects: turned into data, never called.
                b'c' => {
                    let module = self.line(MAX_SHORT_LINE)?;
                    let name = self.line(MAX_SHORT_LINE)?;
                    let global = self.global(module, name)?;
                    self.push(global)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(Obj::Str(module)), Some(Obj::Str(name))) =
                        (self.obj(module), self.obj(name))
                    else {
                        return Err(invalid("STACK_GLOBAL needs two strings"));
                    };
                    let (module, name) = (module.clone(), name.clone());
                    let global = self.global(module.as_bytes(), name.as_bytes())?;
                    self.push(global)?;
                }
                b'i' => {
                    let module = self.line(MAX_SHORT_LINE)?;
                    let name = self.line(MAX_SHORT_LINE)?;
                    let class = self.global(module, name)?;
                    let args = self.pop_mark()?;
                    let result = self.instantiate(class, &args)?;
                    self.push(result)?;
                }
                b'o' => {
                    let items = self.pop_mark()?;
                    let (&class, args) = items
                        .split_first()
                        .ok_or_else(|| invalid("OBJ without a class"))?;
                    let result = self.instantiate(class, args)?;
                    self.push(result)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.tuple_items(args)?;
                    let result = self.call(callable, &args)?;
                    self.push(result)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.tuple_items(args)?;
                    let result = self.instantiate(class, &args)?;
                    self.push(result)?;
                }
                0x92 => {
                    self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.tuple_items(args)?;
                    let result = self.instantiate(class, &args)?;
                    self.push(result)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state);
                }
                other => {
                    return Err(DecodeError::new(
                        kind::PICKLE_OPCODE,
                        format!(
                            "unsupported pickle opcode 0x{other:02x} at byte {}",
                            self.pos - 1
                        ),
                    ));
                }
            }
        }
    }

    pub(super) fn spend(&mut self, n: usize) -> Result<(), DecodeError> {
        self.spent = self.spent.saturating_add(n);
        if self.spent > self.max_nodes {
            return Err(over_budget("too many values"));
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.data.get(self.pos).ok_or_else(truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let bytes = data.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn size8(&mut self) -> Result<usize, DecodeError> {
        let n = u64::from_le_bytes(self.array()?);
        // Larger than any frame: the data cannot be there.
        usize::try_from(n).map_err(|_| truncated())
    }

    /// A `\n`-terminated line (without the `\n`) of at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let window = &rest[..rest.len().min(max.saturating_add(1))];
        match memchr::memchr(b'\n', window) {
            Some(end) => {
                self.pos += end + 1;
                Ok(&rest[..end])
            }
            None if window.len() == rest.len() => Err(truncated()),
            None => Err(over_budget("text operand too long")),
        }
    }

    fn line_index(&mut self) -> Result<u32, DecodeError> {
        let line = self.line(MAX_SHORT_LINE)?;
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| invalid("bad memo index"))
    }

    pub(super) fn push(&mut self, slot: Slot) -> Result<(), DecodeError> {
        self.spend(1)?;
        self.stack.push(slot);
        Ok(())
    }

    pub(super) fn push_obj(&mut self, obj: Obj) -> Result<(), DecodeError> {
        let slot = self.alloc(obj);
        self.push(slot)
    }

    pub(super) fn alloc(&mut self, obj: Obj) -> Slot {
        self.arena.push(obj);
        self.shared.push(false);
        Slot::Obj(self.arena.len() - 1)
    }

    fn mark_shared(&mut self, slot: Slot) {
        if let Slot::Obj(index) = slot
            && let Some(shared) = self.shared.get_mut(index)
        {
            *shared = true;
        }
    }

    fn push_text(&mut self, n: usize) -> Result<(), DecodeError> {
        let bytes = self.take(n)?;
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => {
                let text = lossy_utf8(bytes);
                self.lossy_text = true;
                text
            }
        };
        self.push_obj(Obj::Str(text))
    }

    fn push_bytes(&mut self, n: usize) -> Result<(), DecodeError> {
        let bytes = self.take(n)?.to_vec();
        self.push_obj(Obj::Bytes(bytes))
    }

    pub(super) fn pop(&mut self) -> Result<Slot, DecodeError> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err(invalid("stack underflow at a MARK"));
        }
        self.stack.pop().ok_or_else(|| invalid("stack underflow"))
    }

    pub(super) fn top(&self) -> Result<Slot, DecodeError> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err(invalid("stack underflow at a MARK"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| invalid("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Slot>, DecodeError> {
        let at = self.marks.pop().ok_or_else(|| invalid("no MARK"))?;
        Ok(self.stack.split_off(at.min(self.stack.len())))
    }

    pub(super) fn obj(&self, slot: Slot) -> Option<&Obj> {
        match slot {
            Slot::Obj(i) => self.arena.get(i),
            _ => None,
        }
    }

    fn extend_list(&mut self, items: Vec<Slot>) -> Result<(), DecodeError> {
        let target = self.top()?;
        match target {
            Slot::Obj(i) => match self.arena.get_mut(i) {
                Some(Obj::List(list)) => {
                    list.extend(items);
                    Ok(())
                }
                _ => Err(invalid("APPEND to something not a list")),
            },
            _ => Err(invalid("APPEND to something not a list")),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(Slot, Slot)>) -> Result<(), DecodeError> {
        let target = self.top()?;
        match target {
            Slot::Obj(i) => match self.arena.get_mut(i) {
                Some(Obj::Dict(dict)) => {
                    dict.extend(pairs);
                    Ok(())
                }
                _ => Err(invalid("SETITEM on something not a dict")),
            },
            _ => Err(invalid("SETITEM on something not a dict")),
        }
    }

    fn memo_put(&mut self, index: u32) -> Result<(), DecodeError> {
        let top = self.top()?;
        self.spend(1)?;
        let index = index as usize;
        if index >= self.max_nodes {
            return Err(over_budget("memo index beyond the node budget"));
        }
        if index >= self.memo.len() {
            self.memo.resize(index + 1, None);
        }
        if self.memo[index].replace(top).is_none() {
            self.memo_count += 1;
        }
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), DecodeError> {
        let slot = self
            .memo
            .get(index as usize)
            .copied()
            .flatten()
            .ok_or_else(|| invalid("memo entry missing"))?;
        self.mark_shared(slot);
        self.push(slot)
    }
}

/// Pairs the items of SETITEMS or DICT.
fn pairs(items: Vec<Slot>) -> Result<Vec<(Slot, Slot)>, DecodeError> {
    if !items.len().is_multiple_of(2) {
        return Err(invalid("odd number of dict items"));
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        pairs.push((k, v));
    }
    Ok(pairs)
}
