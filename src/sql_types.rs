//! SQL types pgrx does not map the way our contract needs: `pg_lsn` (pgrx
//! has none) and an `oid` that may be 0 (pgrx turns InvalidOid into NULL,
//! but a shared relation's database really is 0).

use blockbackup_core::Lsn;
use pgrx::prelude::*;
use pgrx::{pg_sys, FromDatum, IntoDatum};

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgLsn(pub Lsn);

impl From<Lsn> for PgLsn {
    fn from(lsn: Lsn) -> Self {
        PgLsn(lsn)
    }
}

impl FromDatum for PgLsn {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| PgLsn(Lsn(datum.value() as u64)))
    }
}

impl IntoDatum for PgLsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0 .0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::PG_LSNOID
    }
}

impl_sql_translatable!(PgLsn, "pg_lsn");

unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for PgLsn {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

unsafe impl pgrx::callconv::BoxRet for PgLsn {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0 .0)) }
    }
}

/// An `oid` result that stays 0 instead of becoming NULL.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ZeroableOid(pub u32);

impl IntoDatum for ZeroableOid {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::OIDOID
    }
}

impl_sql_translatable!(ZeroableOid, "oid");

unsafe impl pgrx::callconv::BoxRet for ZeroableOid {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0)) }
    }
}
